"""The per-epoch refresh: extract features, pseudo-label them, build the memories, estimate confidences."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dmdl_dist.clustering.pseudo_labels import PseudoLabels, make_pseudo_labels, true_identity_labels
from dmdl_dist.clustering.refine import gmm_confidence
from dmdl_dist.config import Config
from dmdl_dist.distributed import comm
from dmdl_dist.engine.extract import extract_features
from dmdl_dist.engine.step import Memories
from dmdl_dist.memory import ClusterMemory, ShardedClusterMemory, centroids
from dmdl_dist.models.cai import modality_prior


@dataclass
class Refresh:
    labels: PseudoLabels
    confidence: list[np.ndarray]  # per modality: N_m label confidences (1 during warm-up)
    memories: Memories
    timings: dict[str, float]


def label_confidence(
    features: torch.Tensor, labels: np.ndarray, memory: ClusterMemory, scope: str
) -> np.ndarray:
    """CBT's confidence: posterior of the low-loss component of a 2-Gaussian mixture on per-sample losses."""
    keep = labels >= 0
    conf = np.zeros(labels.shape[0], dtype=np.float32)
    if not keep.any():
        return conf
    lab = torch.as_tensor(labels[keep], device=features.device)
    losses = F.cross_entropy(memory.logits(features[keep]), lab, reduction="none").cpu().numpy()
    conf[keep] = gmm_confidence(losses, groups=labels[keep] if scope == "cluster" else None)
    return conf


def shard_memories(memories: Memories) -> Memories:
    """Keeps only this rank's slice of every memory (the full ones are dropped after the refresh).

    Every rank builds the full centroids from the gathered features once per refresh (the GMM
    confidence scores every training sample against them); between refreshes each holds C / N.
    """
    def cut(mem: ClusterMemory) -> ShardedClusterMemory:
        return ShardedClusterMemory.from_full(mem.centroids, temperature=mem.temperature, momentum=mem.momentum)

    return Memories(own=[cut(m) for m in memories.own], unified=memories.unified and cut(memories.unified),
                    to_unified=memories.to_unified, prior=memories.prior)


def refresh(
    model: torch.nn.Module,
    root: str,
    paths: list[list[str]],
    pids: list[np.ndarray],
    cfg: Config,
    *,
    stage: int,
    epoch: int,
    epoch_in_stage: int,
    device: torch.device,
    progress: bool = True,
) -> Refresh:
    """Everything a training epoch needs, computed from the current model."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    local = []
    for p, name in zip(paths, ("visible", "infrared"), strict=True):
        start, end = comm.shard_bounds(len(p))  # each rank extracts its own contiguous slice
        local.append(extract_features(
            model, root, p[start:end], height=cfg.data.height, width=cfg.data.width, device=device,
            batch_size=cfg.train.eval_batch_size, workers=cfg.data.loader_workers,
            desc=f"extract {name}" if progress else None,
        ))
    t1 = time.perf_counter()
    feats = [comm.all_gather_cat(torch.from_numpy(f).to(device)).cpu().numpy() for f in local]
    timings["extract"], timings["gather"] = t1 - t0, time.perf_counter() - t1
    # The clustering service: one rank clusters the gathered features, every rank gets the labels.
    labels = None
    if comm.is_main():
        if cfg.train.supervised:
            labels = true_identity_labels(pids)
        else:
            labels = make_pseudo_labels(
                feats, stage=stage, epoch=epoch, k1=cfg.cluster.k1, k2=cfg.cluster.k2, eps=cfg.cluster.eps,
                min_samples=cfg.cluster.min_samples, association=cfg.cluster.association,
            )
    t2 = time.perf_counter()
    labels = comm.broadcast_object(labels)
    timings.update(labels.timings)
    timings["broadcast"] = time.perf_counter() - t2
    for m, name in enumerate(("visible", "infrared")):
        if labels.num_clusters[m] == 0:
            raise RuntimeError(
                f"clustering found no {name} cluster at epoch {epoch} (every sample an outlier): raise "
                f"cluster.eps (now {cfg.cluster.eps}) or lower cluster.min_samples (now {cfg.cluster.min_samples})"
            )

    t0 = time.perf_counter()
    tf = [torch.from_numpy(f).to(device) for f in feats]
    mem_kw = dict(temperature=cfg.memory.temperature, momentum=cfg.memory.momentum)
    own = [
        ClusterMemory(centroids(f, torch.as_tensor(lab, device=device), n), **mem_kw)
        for f, lab, n in zip(tf, labels.labels, labels.num_clusters, strict=True)
    ]
    memories = Memories(own=own)
    if stage == 2:
        allf = torch.cat(tf)
        allu = torch.as_tensor(np.concatenate(labels.unified), device=device)
        memories.unified = ClusterMemory(centroids(allf, allu, labels.num_unified), **mem_kw)
        memories.to_unified = [torch.as_tensor(t, device=device) for t in labels.to_unified]
        counts = [int((lab >= 0).sum()) for lab in labels.labels]
        memories.prior = modality_prior(counts, cfg.cai.prior).to(device)

    share = cfg.cbt.confidence_from_stage1 if stage == 1 else cfg.cbt.confidence_from_stage2
    stage_epochs = cfg.train.stage1_epochs if stage == 1 else cfg.train.stage2_epochs
    use_gmm = cfg.cbt.refine and cfg.cbt.confidence == "gmm" and epoch_in_stage >= round(share * stage_epochs)
    if use_gmm:
        confidence = [
            label_confidence(f, lab, mem, cfg.cbt.confidence_scope)
            for f, lab, mem in zip(tf, labels.labels, own, strict=True)
        ]
    else:
        confidence = [np.ones(lab.shape[0], dtype=np.float32) for lab in labels.labels]
    if cfg.memory.sharded:
        memories = shard_memories(memories)
    timings["memory"] = time.perf_counter() - t0
    return Refresh(labels=labels, confidence=confidence, memories=memories, timings=timings)
