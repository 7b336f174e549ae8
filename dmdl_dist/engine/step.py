"""One DMDL training step: forward both modalities and views, return named losses (fast-reid habit 1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dmdl_dist.clustering.refine import refined_targets, topk_softmax
from dmdl_dist.config import Config
from dmdl_dist.distributed.comm import all_gather_cat, all_gather_sizes
from dmdl_dist.engine.losses import mmd_loss, soft_cross_entropy, triplet_loss
from dmdl_dist.memory import ClusterMemory, ShardedClusterMemory
from dmdl_dist.memory.sharded_loss import sharded_cai_contrast, sharded_contrast
from dmdl_dist.models.cai import adaptive_momentum, adjusted_log_probs

Memory = ClusterMemory | ShardedClusterMemory


@dataclass
class Batch:
    """One modality's share of a step: V views of B images with their labels."""

    views: list[torch.Tensor]  # V x (B x 3 x H x W), V = 1 (plain) or 2 (CBT two-view)
    labels: torch.Tensor  # B, the modality's own cluster ids
    unified: torch.Tensor | None  # B, shared ids across modalities (stage 2)
    confidence: torch.Tensor  # B, label confidence lam in [0, 1]


@dataclass
class Memories:
    own: list[Memory]  # one per modality
    unified: Memory | None = None  # stage 2
    to_unified: list[torch.Tensor] | None = None  # per modality: cluster -> unified id
    prior: torch.Tensor | None = None  # P(m) for CAI


def _refined(logits_other: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, topk: int, refine: bool):
    """Target for one view: the other view's top-k memory prediction mixed with the one-hot label."""
    if not refine:
        return F.one_hot(labels, logits_other.shape[1]).float()
    p_memory = topk_softmax(logits_other.detach(), min(topk, logits_other.shape[1]))
    return refined_targets(p_memory, labels, lam)


def _contrast(feats: list[torch.Tensor], scorer, labels, lam, topk: int, refine: bool) -> torch.Tensor:
    """Memory loss averaged over views; each view's target comes from the other view."""
    logits = [scorer(f) for f in feats]
    losses = []
    for v, lg in enumerate(logits):
        other = logits[(v + 1) % len(logits)]
        target = _refined(other, labels, lam, topk, refine)
        losses.append(soft_cross_entropy(lg, target))
    return torch.stack(losses).mean()


def _memory_loss(feats: list[torch.Tensor], memory: Memory, labels, lam, topk: int, refine: bool) -> torch.Tensor:
    if isinstance(memory, ShardedClusterMemory):
        return sharded_contrast(feats, memory, labels, lam, topk, refine)
    return _contrast(feats, memory.logits, labels, lam, topk, refine)


def _cai_loss(feats: list[torch.Tensor], memories: Memories, labels, lam, cfg: Config, topk: int) -> torch.Tensor:
    if isinstance(memories.unified, ShardedClusterMemory):
        return sharded_cai_contrast(feats, memories.own, memories.to_unified, memories.prior,
                                    memories.unified.num_clusters, cfg.cai.temperature, labels, lam, topk,
                                    cfg.cbt.refine)
    scorer = _cai_scorer(memories, cfg.cai.temperature)
    return _contrast(feats, scorer, labels, lam, topk, cfg.cbt.refine)


def train_step(
    model: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batches: list[Batch],
    memories: Memories,
    cfg: Config,
    *,
    stage: int,
    triplet_weight: float,
) -> tuple[dict[str, torch.Tensor], list[list[torch.Tensor]]]:
    """Forward pass and losses. Returns (named losses, unit features per modality and view).

    The caller sums the losses, steps the optimizer and then updates the memories with the
    returned features, so the memory never sits inside autograd or the DDP wrapper.
    """
    sizes = [[v.shape[0] for v in b.views] for b in batches]
    images = torch.cat([v for b in batches for v in b.views])  # (sum of V*B) x 3 x H x W
    feat, bn = model(images)
    feat, bn = feat.float(), bn.float()  # losses and memories in fp32 whatever the engine's precision
    unit = F.normalize(bn, dim=1)
    flat_unit = list(torch.split(unit, [s for ss in sizes for s in ss]))
    flat_feat = list(torch.split(feat, [s for ss in sizes for s in ss]))
    per_mod_unit, per_mod_feat, i = [], [], 0
    for ss in sizes:
        per_mod_unit.append(flat_unit[i : i + len(ss)])
        per_mod_feat.append(flat_feat[i : i + len(ss)])
        i += len(ss)

    topk = cfg.cbt.topk_stage1 if stage == 1 else cfg.cbt.topk_stage2
    refine = cfg.cbt.refine
    losses: dict[str, torch.Tensor] = {}
    own = [
        _memory_loss(per_mod_unit[m], memories.own[m], b.labels, b.confidence, topk, refine)
        for m, b in enumerate(batches)
    ]
    losses["memory"] = torch.stack(own).sum()

    if cfg.train.triplet and triplet_weight > 0:
        if stage == 1:
            tri = [triplet_loss(torch.cat(per_mod_feat[m]), b.labels.repeat(len(b.views)), cfg.train.triplet_margin)
                   for m, b in enumerate(batches)]
            losses["triplet"] = triplet_weight * torch.stack(tri).sum()
        else:
            feats = torch.cat([f for fs in per_mod_feat for f in fs])
            labels = torch.cat([b.unified.repeat(len(b.views)) for b in batches])
            losses["triplet"] = triplet_weight * triplet_loss(feats, labels, cfg.train.triplet_margin)

    if cfg.cbt.mmd and cfg.cbt.augment:
        mmd = [mmd_loss(fs[0], fs[1], cfg.cbt.mmd_kernels, cfg.cbt.mmd_mul) for fs in per_mod_unit if len(fs) == 2]
        if mmd:
            losses["mmd"] = cfg.cbt.mmd_weight * torch.stack(mmd).sum()

    if stage == 2:
        cross, cai = [], []
        for m, b in enumerate(batches):
            cross.append(_memory_loss(per_mod_unit[m], memories.unified, b.unified, b.confidence, topk, refine))
            if cfg.cai.enabled:
                cai.append(_cai_loss(per_mod_unit[m], memories, b.unified, b.confidence, cfg, topk))
        losses["cross"] = torch.stack(cross).sum()
        if cai:
            losses["cai"] = cfg.cai.weight * torch.stack(cai).sum()
    return losses, per_mod_unit


def _cai_scorer(memories: Memories, temperature: float):
    """log P(Y | do(X)) as 'logits' (log-probabilities are their own log-softmax)."""

    def score(feats: torch.Tensor) -> torch.Tensor:
        return adjusted_log_probs(
            feats,
            [mem.centroids for mem in memories.own],
            memories.to_unified,
            memories.prior,
            memories.unified.num_clusters,
            temperature,
        )

    return score


@torch.no_grad()
def update_memories(memories: Memories, batches: list[Batch], feats: list[list[torch.Tensor]], cfg: Config) -> None:
    """Momentum updates after the optimizer step, with every view's features of every rank.

    Features and labels are gathered first, so every rank applies the same update and the
    (replicated) memories stay identical.
    """
    for m, b in enumerate(batches):
        views = len(b.views)
        local = torch.cat(feats[m]).detach()
        sizes = all_gather_sizes(local.shape[0], local.device)  # one size exchange for the gathers below
        f = all_gather_cat(local, sizes)
        memories.own[m].update(f, all_gather_cat(b.labels.repeat(views), sizes))
        if memories.unified is not None:
            mom = None
            if cfg.cai.enabled and cfg.cai.adaptive_momentum:
                mom = all_gather_cat(adaptive_momentum(b.confidence, cfg.memory.momentum).repeat(views), sizes)
            memories.unified.update(f, all_gather_cat(b.unified.repeat(views), sizes), mom)
