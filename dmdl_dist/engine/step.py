"""One DMDL training step: forward both modalities and views, return named losses (fast-reid habit 1).

Stage 1 (per modality m, its own clusters): memory_m = soft cross-entropy of f . M_m^T / tau against
the refined target t = (1 - lam) * topk_softmax(other view against M_m) + lam * onehot.
Stage 2 (shared labels, ../shared/METHOD.md): targets from the unified memory U; memory_m = hard
cross-entropy against the modality's shared-space memory; cai_m = -sum t log P(y | do(x)) with
both modalities' memories (models/cai.py). Both stages add the batch-hard triplet and the MMD
between the two views, on the raw BN-neck features.

The recipe's batch is global: each worker holds its share, per-sample losses are averaged locally
(DDP's gradient average makes that the global mean) and the losses that look across the batch
(triplet, MMD) see the features of every worker, gathered with their gradient. Memory updates run
after the optimizer step over the gathered batch in one global order (view 1 rows, then view 2).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dmdl_dist.clustering.refine import refined_targets, topk_softmax
from dmdl_dist.distributed import comm
from dmdl_dist.engine.losses import cross_entropy_of_probs, mmd_loss, soft_cross_entropy, triplet_loss
from dmdl_dist.memory import ClusterMemory, ShardedClusterMemory
from dmdl_dist.memory import sharded_loss as sharded
from dmdl_dist.memory.cluster_memory import scores
from dmdl_dist.models.cai import adaptive_momentum, adjusted_probs

Memory = ClusterMemory | ShardedClusterMemory
VISIBLE, INFRARED = 0, 1
LOCAL_LOSSES = ("memory", "cai")  # per-sample means over this worker's rows; the others are global already


@dataclass
class Batch:
    """One modality's share of a step: V views of this worker's B images with their labels."""

    views: list[torch.Tensor]  # V x (B x 3 x H x W), V = 1 (plain) or 2 (CBT two-view)
    labels: torch.Tensor  # B: stage 1 the modality's cluster ids, stage 2 the shared labels
    confidence: torch.Tensor  # B, label confidence lam in [0, 1] (1: one-hot targets)


@dataclass
class Memories:
    own: list[Memory]  # per modality; stage 2: one row per shared label present in the modality
    unified: Memory | None = None  # stage 2: one row per shared label, both modalities
    prior: torch.Tensor | None = None  # stage 2: P(m) for CAI
    anchor: int | None = None  # stage 2: the modality whose clusters are the shared labels
    anchor_preview: torch.Tensor | None = None  # stage 2, within a step: see step.scores


@dataclass
class StepSettings:
    """What the schedule decides for a step (engine/schedule.py)."""

    stage: int
    triplet_weight: float
    joint: bool = False  # stage 2, late: the cross-modality triplet over the joint batch
    soft_targets: bool = True  # False: one-hot targets (refinement off)
    topk: int = 3
    cai_weight: float = 0.0  # 0: no CAI loss
    cai_temperature: float = 0.05
    mmd_weight: float = 1.0
    triplet_margin: float = 0.3
    mmd_kernels: int = 5
    mmd_mul: float = 2.0
    global_batch: bool = True  # False (dist.batch=per_worker): triplet and MMD over this worker's rows only


@dataclass
class StepFeatures:
    """What the memory update needs from a step: this worker's unit features and targets at the labels."""

    unit: list[list[torch.Tensor]]  # per modality, per view: B x D, detached
    target_at_label: list[list[torch.Tensor]]  # per modality, per view: B (stage 2's adaptive momentum)


def swap_views(rows: torch.Tensor, views: int) -> torch.Tensor:
    """Rows [view 1; view 2] -> [view 2; view 1]: each view takes its target from the other one."""
    if views == 1:
        return rows
    half = rows.shape[0] // 2
    return torch.cat([rows[half:], rows[:half]])


def _targets(scores: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, views: int, s: StepSettings):
    """t = (1 - lam) * topk_softmax(other view's scores) + lam * onehot; scores: VB x C (detached)."""
    if not s.soft_targets:
        return F.one_hot(labels, scores.shape[1]).float()
    p = swap_views(topk_softmax(scores, min(s.topk, scores.shape[1])), views)
    return refined_targets(p, labels, lam)


def _gathered(views: Sequence[torch.Tensor], s: StepSettings) -> torch.Tensor:
    """The global batch's rows of every view, [view 1 of all workers; view 2 ...], with gradient."""
    if not s.global_batch:
        return torch.cat(list(views))
    return torch.cat([comm.gather_with_grad(v)[0] for v in views])


def _gathered_labels(labels: torch.Tensor, views: int, s: StepSettings) -> torch.Tensor:
    return (comm.all_gather_cat(labels) if s.global_batch else labels).repeat(views)


def train_step(
    model: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batches: list[Batch],
    memories: Memories,
    s: StepSettings,
) -> tuple[dict[str, torch.Tensor], StepFeatures]:
    """Forward pass and named losses of one step; the caller sums them, steps and updates the memories."""
    sizes = [[v.shape[0] for v in b.views] for b in batches]
    images = torch.cat([v for b in batches for v in b.views])  # (sum of V*B) x 3 x H x W
    _, bn = model(images)
    raw = list(torch.split(bn.float(), [n for ss in sizes for n in ss]))  # raw BN-neck features per view
    per_mod, i = [], 0
    for ss in sizes:
        per_mod.append(raw[i : i + len(ss)])
        i += len(ss)

    losses: dict[str, torch.Tensor] = {}
    memory, cai, targets_at = [], [], []
    for m, b in enumerate(batches):
        views = len(b.views)
        unit = F.normalize(torch.cat(per_mod[m]), dim=1)  # VB x D
        labels, lam = b.labels.repeat(views), b.confidence.repeat(views)
        if s.stage == 1:
            mem = memories.own[m]
            if isinstance(mem, ShardedClusterMemory):
                memory.append(sharded.stage1_loss(unit, mem, labels, lam, views, s.topk, s.soft_targets))
            else:
                logits = mem.logits(unit)
                target = _targets(logits.detach(), labels, lam, views, s)
                memory.append(soft_cross_entropy(logits, target))
            targets_at.append(torch.ones_like(lam))
            continue
        if m == INFRARED:
            memories.anchor_preview = preview_anchor(memories, batches[VISIBLE], per_mod[VISIBLE])
        if isinstance(memories.unified, ShardedClusterMemory):
            own, c, t_y = sharded.stage2_losses(unit, memories, m, labels, lam, views, s)
        else:
            own, c, t_y = _stage2_losses(unit, memories, m, labels, lam, views, s)
        memory.append(own)
        cai += [c] if c is not None else []
        targets_at.append(t_y)
    losses["memory"] = torch.stack(memory).sum()
    if cai:
        losses["cai"] = s.cai_weight * torch.stack(cai).sum()

    if s.triplet_weight > 0:
        tri, joint_feats, joint_labels = [], [], []
        for m, b in enumerate(batches):
            feats = _gathered(per_mod[m], s)
            labels = _gathered_labels(b.labels, len(b.views), s)
            tri.append(triplet_loss(feats, labels, s.triplet_margin))
            joint_feats.append(feats)
            joint_labels.append(labels)
        if s.joint:
            tri.append(triplet_loss(torch.cat(joint_feats), torch.cat(joint_labels), s.triplet_margin))
        losses["triplet"] = s.triplet_weight * torch.stack(tri).sum()
    if s.mmd_weight > 0 and all(len(b.views) == 2 for b in batches):
        mmd = []
        for m in range(len(batches)):
            v1, v2 = (_gathered([v], s) for v in per_mod[m])
            mmd.append(mmd_loss(v1, v2, s.mmd_kernels, s.mmd_mul))
        losses["mmd"] = s.mmd_weight * torch.stack(mmd).sum()

    unit_views = [[F.normalize(v.detach(), dim=1) for v in feats] for feats in per_mod]
    split_t = [list(torch.split(t.detach(), [b.labels.shape[0]] * len(b.views))) for t, b in zip(targets_at, batches,
                                                                                                 strict=True)]
    return losses, StepFeatures(unit_views, split_t)


def _stage2_losses(unit, memories: Memories, m: int, labels, lam, views: int, s: StepSettings):
    """(own memory loss, CAI loss or None, target at the label: VB) of modality m's rows."""
    unified = memories.unified
    target = _targets(unified.logits(unit).detach(), labels, lam, views, s)  # VB x U
    late = [memories.anchor_preview if (m == INFRARED and i == memories.anchor) else None
            for i in range(len(memories.own))]  # see memory.cluster_memory.scores
    mem = memories.own[m]
    own = F.cross_entropy(scores(unit, mem.centroids, mem.temperature, late[m]), mem.rows_of(labels))
    c = None
    if s.cai_weight > 0:
        z = [scores(unit, x.centroids, s.cai_temperature, late[i]) for i, x in enumerate(memories.own)]
        probs = adjusted_probs(z, [x.labels for x in memories.own], memories.prior, unified.num_clusters)
        c = cross_entropy_of_probs(probs, target)
    return own, c, target.gather(1, labels[:, None]).squeeze(1)


@torch.no_grad()
def preview_anchor(memories: Memories, batch: Batch, unit: list[torch.Tensor]) -> torch.Tensor:
    """The anchor memory's centroids (this rank's shard, when sharded) after the visible rows' updates.

    What the infrared rows' gradient sees in the release (memory.cluster_memory.scores).
    """
    gather = comm.all_gather_cat
    preview = copy.deepcopy(memories.own[memories.anchor])
    preview.update(torch.cat([gather(F.normalize(v.detach(), dim=1)) for v in unit]),
                   gather(batch.labels).repeat(len(unit)))
    return preview.shard if isinstance(preview, ShardedClusterMemory) else preview.centroids


@torch.no_grad()
def update_memories(memories: Memories, batches: list[Batch], feats: StepFeatures, *, stage: int,
                    adaptive: bool = True) -> None:
    """The release's updates after the optimizer step, sample by sample over the gathered global batch.

    Stage 1: each modality's memory from its rows (view 1 rows, then view 2). Stage 2: first the
    unified memory, infrared rows then visible rows, momentum m / max(t_y, m) (adaptive); then each
    modality's memory from its own rows, the anchor's memory also from the source modality's rows,
    visible rows before infrared rows (the order of the release's backward). The release indexes the
    unified memory by the label's row in the anchor memory, which is the label itself (the anchor's
    rows are the shared labels 0..U-1); a label the anchor memory lacks leaves the unified memory as it is.
    """
    gather = comm.all_gather_cat  # every rank's rows (also with dist.batch=per_worker): the memories stay one
    rows = []  # per modality: (unit features, labels, targets at the labels), all views, global order
    for m, b in enumerate(batches):
        labels = gather(b.labels).repeat(len(b.views))
        rows.append((torch.cat([gather(f) for f in feats.unit[m]]), labels,
                     torch.cat([gather(t) for t in feats.target_at_label[m]])))
    if stage == 1:
        for m, (f, labels, _) in enumerate(rows):
            memories.own[m].update(f, labels)
        return
    anchor = memories.own[memories.anchor]
    for m in (INFRARED, VISIBLE):
        f, labels, t_y = rows[m]
        momentum = adaptive_momentum(t_y, memories.unified.momentum) if adaptive else None
        memories.unified.update_rows(f, torch.where(anchor.rows_of(labels) >= 0, labels, -1), momentum)
    for owner, mem in enumerate(memories.own):
        for m in (VISIBLE, INFRARED):
            if m == owner or owner == memories.anchor:
                f, labels, _ = rows[m]
                mem.update(f, labels)
