"""Pseudo-labels for one epoch: per-modality Jaccard + DBSCAN, then (stage 2) cross-modality association.

Pure functions over feature arrays; the distributed clustering service gathers the features,
splits the k-NN search over every worker (distributed/knn.py), calls `make_pseudo_labels` once
with the neighbours and sends the result to every worker.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dmdl_dist.clustering.association import associate_hungarian, associate_nearest, unified_labels
from dmdl_dist.clustering.dbscan import dbscan_labels
from dmdl_dist.clustering.jaccard import jaccard_distance, knn_for_jaccard
from dmdl_dist.clustering.knn import Neighbours


@dataclass
class PseudoLabels:
    labels: list[np.ndarray]  # per modality: N_m cluster ids, -1 for outliers
    num_clusters: list[int]
    unified: list[np.ndarray] | None = None  # stage 2, per modality: N_m shared ids, -1 for outliers
    to_unified: list[np.ndarray] | None = None  # stage 2, per modality: C_m -> shared id
    num_unified: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def outlier_fraction(self, m: int) -> float:
        return float((self.labels[m] < 0).mean()) if self.labels[m].size else 0.0

    def association_rate(self) -> float:
        """Share of clusters (both modalities) whose shared id also has a cluster of the other modality."""
        if self.to_unified is None:
            return 0.0
        v, i = (set(t.tolist()) for t in self.to_unified)
        both = v & i
        total = sum(len(t) for t in self.to_unified)
        return sum(int(u in both) for t in self.to_unified for u in t.tolist()) / max(total, 1)


def cluster_features(
    features: np.ndarray, *, k1: int, k2: int, eps: float, min_samples: int, timings: dict[str, float], tag: str,
    knn_backend: str = "auto", device: str | None = None, neighbours: Neighbours | None = None,
) -> np.ndarray:
    """Jaccard distance + DBSCAN labels of one modality's features.

    neighbours: knn_for_jaccard(features, k1) found elsewhere (the sharded k-NN service, which
    times it itself); None searches here with knn_backend on device.
    """
    t0 = time.perf_counter()
    if neighbours is None:
        neighbours = knn_for_jaccard(features, k1, backend=knn_backend, device=device)
        timings[f"knn_{tag}"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    dist = jaccard_distance(features, k1=k1, k2=k2, neighbours=neighbours)
    t2 = time.perf_counter()
    labels = dbscan_labels(dist, eps=eps, min_samples=min_samples)
    timings[f"jaccard_{tag}"] = t2 - t1
    timings[f"dbscan_{tag}"] = time.perf_counter() - t2
    return labels


def cluster_to_unified(labels: np.ndarray, unified: np.ndarray, num_clusters: int) -> np.ndarray:
    """C -> shared id, read off any member of each cluster."""
    mapping = np.full(num_clusters, -1, dtype=np.int64)
    keep = labels >= 0
    mapping[labels[keep]] = unified[keep]
    return mapping


def _centroids(features: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    sums = np.zeros((n, features.shape[1]), dtype=np.float64)
    keep = labels >= 0
    np.add.at(sums, labels[keep], features[keep])
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def make_pseudo_labels(
    features: list[np.ndarray],
    *,
    stage: int,
    epoch: int,
    k1: int,
    k2: int,
    eps: float,
    min_samples: int,
    association: str = "nearest",
    knn_backend: str = "auto",
    device: str | None = None,
    neighbours: Sequence[Neighbours] | None = None,
) -> PseudoLabels:
    """Clusters each modality; in stage 2 also maps both modalities into one shared label space.

    The nearest-centroid direction alternates with the epoch: even epochs visible -> infrared,
    odd epochs infrared -> visible (DMDL). neighbours: per modality, knn_for_jaccard(features[m],
    k1) found elsewhere; None searches here (knn_backend on device, as in clustering.knn.knn).
    """
    timings: dict[str, float] = {}
    found = [None, None] if neighbours is None else list(neighbours)
    labels = [
        cluster_features(f, k1=k1, k2=k2, eps=eps, min_samples=min_samples, timings=timings, tag=tag,
                         knn_backend=knn_backend, device=device, neighbours=nb)
        for f, tag, nb in zip(features, ("visible", "infrared"), found, strict=True)
    ]
    counts = [int(lab.max()) + 1 if lab.size else 0 for lab in labels]
    result = PseudoLabels(labels=labels, num_clusters=counts, timings=timings)
    if stage == 2:
        t0 = time.perf_counter()
        cents = [_centroids(f, lab, n) for f, lab, n in zip(features, labels, counts, strict=True)]
        if association == "hungarian":
            assoc = associate_hungarian(cents[0], cents[1])
        else:
            assoc = associate_nearest(cents[0], cents[1], direction="v2i" if epoch % 2 == 0 else "i2v")
        vis_u, ir_u, n_u = unified_labels(labels[0], labels[1], assoc)
        result.unified = [vis_u, ir_u]
        result.num_unified = int(n_u)
        result.to_unified = [
            cluster_to_unified(lab, u, n) for lab, u, n in zip(labels, result.unified, counts, strict=True)
        ]
        timings["association"] = time.perf_counter() - t0
    return result


def true_identity_labels(pids: list[np.ndarray]) -> PseudoLabels:
    """The supervised ceiling: true identities as labels, shared across modalities."""
    shared = np.unique(np.concatenate(pids))
    unified = [np.searchsorted(shared, p) for p in pids]
    labels, counts, to_unified = [], [], []
    for u in unified:
        own_ids, own = np.unique(u, return_inverse=True)
        labels.append(own.astype(np.int64))
        counts.append(len(own_ids))
        to_unified.append(own_ids.astype(np.int64))
    return PseudoLabels(labels, counts, [u.astype(np.int64) for u in unified], to_unified, len(shared))
