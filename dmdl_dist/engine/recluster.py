"""The per-epoch refresh: extract features, pseudo-label them, build the memories, estimate confidences.

Every rank extracts the flip-averaged features of its slice of the training set with identical
weights and BatchNorm statistics (rank 0's); the features are gathered, clustered once (rank 0)
and the labels sent to every rank, which then builds the same memories (or its shard of them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dmdl_dist.clustering.knn import faiss_available, gpu_available
from dmdl_dist.clustering.pseudo_labels import PseudoLabels, make_pseudo_labels, modality_k1, true_identity_labels
from dmdl_dist.clustering.refine import label_confidence
from dmdl_dist.config import Config
from dmdl_dist.distributed import comm
from dmdl_dist.distributed.knn import sharded_knn_for_jaccard
from dmdl_dist.engine.extract import extract_features
from dmdl_dist.engine.schedule import milestone
from dmdl_dist.engine.step import Memories
from dmdl_dist.memory import ClusterMemory, ShardedClusterMemory, centroids
from dmdl_dist.models.cai import modality_prior

MODALITY_NAMES = ("visible", "infrared")


@dataclass
class Refresh:
    labels: PseudoLabels
    confidence: list[np.ndarray]  # per modality: N_m label confidences (1 during the warm-up)
    memories: Memories
    timings: dict[str, float]
    degenerate: list[str] = field(default_factory=list)  # what is wrong with this epoch's clustering, if anything


def knn_backend(choice: str, device: torch.device) -> str:
    """cluster.knn_backend=auto: faiss where installed, but torch on a GPU worker whose faiss has no GPU."""
    if choice != "auto":
        return choice
    if not faiss_available():
        return "torch"
    return "torch" if device.type == "cuda" and not gpu_available() else "faiss"


def degenerate_clustering(labels: list[np.ndarray]) -> list[str]:
    """Clusterings that train nothing useful: a modality all outliers, or one cluster holding most of it."""
    problems = []
    for name, lab in zip(MODALITY_NAMES, labels, strict=True):
        kept = lab[lab >= 0]
        if kept.size == 0:
            problems.append(f"every {name} sample is an outlier")
            continue
        largest = np.bincount(kept).max()
        if largest > lab.size / 2:
            problems.append(f"one {name} cluster holds {largest / lab.size:.0%} of the {name} samples")
    return problems


def shard_memories(memories: Memories) -> Memories:
    """Keeps only this rank's slice of every memory (the full ones are dropped after the refresh).

    Every rank builds the full centroids from the gathered features once per refresh (the label
    confidence scores every training sample against them); between refreshes each holds C / N.
    """
    def cut(mem: ClusterMemory) -> ShardedClusterMemory:
        return ShardedClusterMemory.from_full(mem.centroids, labels=mem.labels, temperature=mem.temperature,
                                              momentum=mem.momentum)

    return Memories(own=[cut(m) for m in memories.own], unified=memories.unified and cut(memories.unified),
                    prior=memories.prior, anchor=memories.anchor)


def build_memories(feats: list[torch.Tensor], labels: PseudoLabels, cfg: Config) -> Memories:
    """Stage 1: a memory per modality over its clusters. Stage 2: per modality one row per shared label
    present in it (the mean of all its features with that label), and the unified memory (both modalities)."""
    kw = dict(temperature=cfg.memory.temperature, momentum=cfg.memory.momentum)
    device = feats[0].device
    if labels.shared is None:
        return Memories(own=[ClusterMemory(centroids(f, torch.as_tensor(lab, device=device), n), **kw)
                             for f, lab, n in zip(feats, labels.labels, labels.num_clusters, strict=True)])
    own = []
    for f, shared in zip(feats, labels.shared, strict=True):
        present = np.unique(shared[shared >= 0])  # the rows of this modality's memory, sorted
        rows = np.searchsorted(present, shared).clip(max=max(len(present) - 1, 0))
        rows = torch.as_tensor(np.where(shared >= 0, rows, -1), device=device)
        own.append(ClusterMemory(centroids(f, rows, len(present)), labels=torch.as_tensor(present), **kw))
    all_labels = torch.as_tensor(np.concatenate(labels.shared), device=device)
    unified = ClusterMemory(centroids(torch.cat(feats), all_labels, labels.num_shared), **kw)
    counts = [int((s >= 0).sum()) for s in labels.shared]
    return Memories(own=own, unified=unified, prior=modality_prior(counts, cfg.cai.prior).to(device),
                    anchor=labels.anchor)


def confidences(feats: list[torch.Tensor], labels: PseudoLabels, memories: Memories, cfg: Config, *, stage: int,
                epoch_in_stage: int) -> list[np.ndarray]:
    """Per-sample label confidence lam (CBT): 1 before the stage's share cbt.confidence_from_stage*, else the
    2-Gaussian mixture per cluster on -p(label); stage 2 pools both modalities per shared label on the
    unified memory."""
    share = cfg.cbt.confidence_from_stage1 if stage == 1 else cfg.cbt.confidence_from_stage2
    stage_epochs = cfg.train.stage1_epochs if stage == 1 else cfg.train.stage2_epochs
    sizes = [lab.shape[0] for lab in labels.labels]
    if not cfg.cbt.refine or cfg.cbt.confidence == "none" or epoch_in_stage < milestone(share, stage_epochs):
        return [np.ones(n, dtype=np.float32) for n in sizes]
    kw = dict(temperature=cfg.memory.temperature, scope=cfg.cbt.confidence_scope)
    if stage == 1:
        return [label_confidence(f, lab, mem.centroids, **kw)
                for f, lab, mem in zip(feats, labels.labels, memories.own, strict=True)]
    pooled = label_confidence(torch.cat(feats), np.concatenate(labels.shared), memories.unified.centroids, **kw)
    return list(np.split(pooled, [sizes[0]]))


def refresh(
    model: torch.nn.Module,
    root: str,
    paths: list[list[str]],
    pids: list[np.ndarray],
    cfg: Config,
    *,
    stage: int,
    epoch_in_stage: int,
    device: torch.device,
    progress: bool = True,
    caches: list | None = None,
) -> Refresh:
    """Everything a training epoch needs, computed from the current model (`caches`: per modality, the images
    of `paths` already decoded and resized, or None)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    comm.broadcast_buffers(getattr(model, "module", model))  # every rank extracts with rank 0's BN statistics
    local = []
    for m, (p, name) in enumerate(zip(paths, MODALITY_NAMES, strict=True)):
        start, end = comm.shard_bounds(len(p))  # each rank extracts its own contiguous slice
        cache = caches[m].slice(start, end) if caches and caches[m] is not None else None
        local.append(extract_features(
            model, root, p[start:end], height=cfg.data.height, width=cfg.data.width, device=device,
            batch_size=cfg.train.eval_batch_size, workers=cfg.data.loader_workers, flip=True,
            desc=f"extract {name}" if progress else None, cache=cache,
        ))
    t1 = time.perf_counter()
    feats_t = [comm.all_gather_cat(torch.from_numpy(f).to(device)) for f in local]  # N_m x D on the device
    feats = [f.cpu().numpy() for f in feats_t]
    timings["extract"], timings["gather"] = t1 - t0, time.perf_counter() - t1
    # The clustering service: every rank searches the k-NN of its slice of rows, rank 0 clusters with the
    # gathered lists, every rank gets the labels.
    neighbours = None
    if not cfg.train.supervised:
        k1s = modality_k1(stage, epoch_in_stage, cfg.cluster.k1, cfg.cluster.k1_source)
        backend = knn_backend(cfg.cluster.knn_backend, device)
        neighbours = []
        for f, k1, name in zip(feats_t, k1s, MODALITY_NAMES, strict=True):
            found, knn_timings = sharded_knn_for_jaccard(f, k1, backend=backend, tag=name)
            neighbours.append(found)
            timings.update(knn_timings)
    labels = None
    if comm.is_main():
        if cfg.train.supervised:
            labels = true_identity_labels(pids, stage=stage, epoch_in_stage=epoch_in_stage)
        else:
            labels = make_pseudo_labels(
                feats, stage=stage, epoch_in_stage=epoch_in_stage, k1=cfg.cluster.k1,
                k1_source=cfg.cluster.k1_source, k2=cfg.cluster.k2, eps=cfg.cluster.eps,
                min_samples=cfg.cluster.min_samples, association=cfg.cluster.association,
                sample_matching=cfg.cluster.sample_matching, neighbours=neighbours,
            )
    t2 = time.perf_counter()
    labels = comm.broadcast_object(labels)
    timings.update({k: v for k, v in labels.timings.items() if k not in timings})
    timings["broadcast"] = time.perf_counter() - t2

    t0 = time.perf_counter()
    tf = [torch.from_numpy(f).to(device) for f in feats]
    problems = degenerate_clustering([labels.train_labels(m) for m in range(2)])
    memories = build_memories(tf, labels, cfg)
    conf = confidences(tf, labels, memories, cfg, stage=stage, epoch_in_stage=epoch_in_stage)
    if cfg.memory.sharded:
        memories = shard_memories(memories)
    timings["memory"] = time.perf_counter() - t0
    return Refresh(labels=labels, confidence=conf, memories=memories, timings=timings, degenerate=problems)
