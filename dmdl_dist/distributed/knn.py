"""The clustering service's k-NN search, split over every worker.

Every rank holds the gathered features of a modality (N x D); rank r searches the exact k-NN of
its rows comm.shard_bounds(N) against all N rows (clustering.knn.knn: faiss or torch, on the
worker's GPU where it has one), and the lists (N x k indices and similarities, small beside the
features) are gathered in row order. The search is exact and its order canonical, so the lists
equal the single-process search's whatever the number of workers, and the Jaccard distance and
DBSCAN that rank 0 runs on them give the same labels. Without a process group this is the
single-process search, timed the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from dmdl_dist.clustering.jaccard import jaccard_k
from dmdl_dist.clustering.knn import Neighbours, knn
from dmdl_dist.distributed import comm

MODALITIES = ("visible", "infrared")


def sharded_knn(
    features: np.ndarray | torch.Tensor, k: int, *, backend: str = "auto", device: str | torch.device | None = None,
    tag: str | None = None,
) -> tuple[Neighbours, dict[str, float]]:
    """Every rank's share of knn(features, k), gathered: (sims N x k float32, idx N x k int64) on every rank.

    Call it on every rank with the same features (the all-gathered ones); backend and device as in
    clustering.knn.knn (a tensor on the worker's GPU is searched there by torch). Returns the
    neighbours and the phase's seconds: knn (this rank's wall time of the search phase: the
    slowest rank's search, as every rank waits for it), knn_rank<r> (each rank's own search),
    knn_gather (the lists' gather); each key ends in _<tag> when a tag is given.
    """
    n = features.shape[0]
    start, end = comm.shard_bounds(n)
    t0 = time.perf_counter()
    sims, idx = knn(features, k, backend=backend, device=device, queries=(start, end))
    own = time.perf_counter() - t0
    where = _collective_device()
    per_rank = comm.all_gather_cat(torch.tensor([own], dtype=torch.float64, device=where))  # W: a sync point too
    t1 = time.perf_counter()
    sizes = comm.all_gather_sizes(end - start, where)
    sims = comm.all_gather_cat(torch.from_numpy(sims).to(where), sizes).cpu().numpy()  # N x k
    idx = comm.all_gather_cat(torch.from_numpy(idx).to(where), sizes).cpu().numpy()  # N x k
    t2 = time.perf_counter()
    suffix = f"_{tag}" if tag else ""
    timings = {f"knn{suffix}": t1 - t0, f"knn_gather{suffix}": t2 - t1}
    timings.update({f"knn_rank{r}{suffix}": float(s) for r, s in enumerate(per_rank.cpu())})
    return (sims, idx), timings


def sharded_knn_for_jaccard(
    features: np.ndarray | torch.Tensor, k1: int, *, backend: str = "auto", device: str | torch.device | None = None,
    tag: str | None = None,
) -> tuple[Neighbours, dict[str, float]]:
    """sharded_knn with the neighbour count jaccard_distance(features, k1, neighbours=...) reads."""
    return sharded_knn(features, jaccard_k(features.shape[0], k1), backend=backend, device=device, tag=tag)


def cluster_neighbours(
    features: Sequence[np.ndarray | torch.Tensor], k1: int, *, backend: str = "auto",
    device: str | torch.device | None = None,
) -> tuple[list[Neighbours], dict[str, float]]:
    """Both modalities' Jaccard neighbour lists (visible, infrared) and their timings, keys tagged by modality.

    The `neighbours` argument of make_pseudo_labels; every rank calls this, rank 0 uses the result.
    """
    found, timings = [], {}
    for f, tag in zip(features, MODALITIES, strict=True):
        nb, t = sharded_knn_for_jaccard(f, k1, backend=backend, device=device, tag=tag)
        found.append(nb)
        timings.update(t)
    return found, timings


def _collective_device() -> torch.device:
    """Where the process group's collectives take tensors: the current GPU under NCCL, else the CPU."""
    if comm.is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
