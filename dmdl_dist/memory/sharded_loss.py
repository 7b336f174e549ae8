"""Memory losses over a sharded label space (PartialFC's recipe, extended to DMDL's soft targets).

Every rank gathers the batch features of all ranks (with gradient), scores them against its
own centroid shard and contributes its part of each loss; the softmax normaliser comes from an
all-reduce of the row maxima and of the sums of exponentials. The objective is the sum over
ranks of each rank's graph: terms that every rank computes alike (the log-normaliser, CAI's
adjusted probabilities) enter it divided by the world size and their backward passes sum the
ranks' gradients. The gradient reaching each rank's own features then equals that of its own
batch's loss against the whole memory, and each function returns that loss's value, so a
sharded run matches an unsharded one (tests/test_sharded_memory.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dmdl_dist.distributed import comm
from dmdl_dist.memory.cluster_memory import scores as split_scores
from dmdl_dist.memory.sharded import ShardedClusterMemory


class _LogSumExp(torch.autograd.Function):
    """Row-wise log-sum-exp over the columns of every rank. z: B x C_local -> B."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        row_max = z.amax(1) if z.shape[1] else z.new_full((z.shape[0],), float("-inf"))
        m = comm.all_reduce_max(row_max.clone())  # B, the global row maximum
        s = comm.all_reduce_sum(torch.exp(z - m[:, None]).sum(1))  # B
        lse = m + torch.log(s)
        ctx.save_for_backward(z, lse)
        return lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        z, lse = ctx.saved_tensors
        grad = comm.all_reduce_sum(grad.contiguous().clone())  # every rank's use of the shared lse
        return grad[:, None] * torch.exp(z - lse[:, None])  # softmax of this rank's columns


def logsumexp(z: torch.Tensor) -> torch.Tensor:
    return _LogSumExp.apply(z)


@torch.no_grad()
def topk_softmax(z: torch.Tensor, start: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over each row's k largest logits across all shards: (global column ids B x k, probs B x k)."""
    local_k = min(k, z.shape[1])
    values, index = z.topk(local_k, dim=1)  # B x local_k
    if local_k < k:  # a shard smaller than k: pad with entries that never win
        pad = k - local_k
        values = torch.cat([values, values.new_full((z.shape[0], pad), float("-inf"))], 1)
        index = torch.cat([index, index.new_full((z.shape[0], pad), -1 - start)], 1)
    index = index + start
    all_values = comm.all_gather_cat(values.t().contiguous()).t()  # B x (world * k)
    all_index = comm.all_gather_cat(index.t().contiguous()).t()
    best, pick = all_values.topk(k, dim=1)  # B x k
    return all_index.gather(1, pick), best.softmax(dim=1)


def sparse_targets(
    z_other: torch.Tensor, start: int, num_clusters: int, labels: torch.Tensor, lam: torch.Tensor, topk: int,
    refine: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CBT's refined target (1 - lam) * topk_softmax(other view) + lam * onehot(label), as (ids, weights).

    Returns B x (k + 1) global cluster ids and weights (a duplicate id simply adds up).
    """
    labels = labels.long()[:, None]  # B x 1
    if not refine:
        return labels, torch.ones_like(labels, dtype=torch.float32)
    index, probs = topk_softmax(z_other.detach(), start, min(topk, num_clusters))
    lam = lam.float()[:, None]
    return torch.cat([index, labels], 1), torch.cat([(1 - lam) * probs, lam], 1)


def soft_cross_entropy(
    z: torch.Tensor, start: int, index: torch.Tensor, weight: torch.Tensor, row_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft cross-entropy of every gathered row against the whole label space, from this rank's columns.

    z: B x C_local logits of columns [start, start + C_local); index, weight: B x K target ids and
    probabilities; row_weight: B. Returns (this rank's share of sum_i row_weight_i * loss_i, for
    backward; every row's full loss, B, detached).
    """
    lse = logsumexp(z)  # B
    total = weight.sum(1)  # B
    own = (index >= start) & (index < start + z.shape[1])
    if z.shape[1]:
        picked = z.gather(1, (index - start).clamp(0, z.shape[1] - 1)) * weight * own  # B x K
        partial = picked.sum(1)
    else:
        partial = z.new_zeros(z.shape[0])
    graph = (row_weight * (total * lse / comm.world_size() - partial)).sum()
    rows = total * lse.detach() - comm.all_reduce_sum(partial.detach().clone())
    return graph, rows


def _gather_views(unit: torch.Tensor, views: int, labels: torch.Tensor, lam: torch.Tensor):
    """Every rank's rows of each view (with gradient), this rank's slice of them, and the gathered labels/lam.

    unit: VB x D, this rank's rows [view 1; view 2]; labels, lam: VB (repeated per view).
    """
    b = unit.shape[0] // views
    sizes = comm.all_gather_sizes(b, unit.device)  # once: every view has this rank's b rows
    gathered = [comm.gather_with_grad(v, sizes) for v in torch.split(unit, b)]
    mine = gathered[0][1]
    row_weight = torch.repeat_interleave(1.0 / sizes.float(), sizes) / views  # 1 / (rows of the row's rank)
    return ([g for g, _ in gathered], mine, comm.all_gather_cat(labels[:b], sizes),
            comm.all_gather_cat(lam[:b], sizes), row_weight)


def _as_loss(graph: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A scalar with the value of this rank's loss and the gradient of its share of the objective."""
    return value.detach() + (graph - graph.detach())


def stage1_loss(
    unit: torch.Tensor, memory: ShardedClusterMemory, labels: torch.Tensor, lam: torch.Tensor, views: int,
    topk: int, soft: bool,
) -> torch.Tensor:
    """Stage 1's memory loss (engine/step.py) with a sharded memory; unit: VB x D, this rank's rows."""
    feats, mine, labels_all, lam_all, row_weight = _gather_views(unit, views, labels, lam)
    logits = [memory.local_logits(f) for f in feats]  # V x (B_all x C_local)
    graph, values = 0.0, []
    for v, z in enumerate(logits):
        other = logits[(v + 1) % views]
        index, weight = sparse_targets(other, memory.start, memory.num_clusters, labels_all, lam_all, topk, soft)
        g, rows = soft_cross_entropy(z, memory.start, index, weight, row_weight)
        graph = graph + g
        values.append(rows[mine])
    return _as_loss(graph, torch.cat(values).mean())


def adjusted_probs(
    feats: torch.Tensor, memories: Sequence[ShardedClusterMemory], prior: torch.Tensor, num_shared: int,
    temperature: float, late: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    """CAI's P(Y | do(X)) (models/cai.py) from sharded modality memories; B x U, the same on every rank."""
    part = feats.new_zeros(feats.shape[0], num_shared)  # B x U
    for m, mem in enumerate(memories):
        z = split_scores(feats, mem.shard, temperature, late[m])  # B x C_local
        probs = torch.exp(z - logsumexp(z)[:, None])  # this rank's columns of the softmax over all C_m
        part = part + prior[m] * feats.new_zeros(part.shape).index_add(1, mem.labels[mem.start : mem.end], probs)
    return comm.replicated_sum(part)


def stage2_losses(unit: torch.Tensor, memories, m: int, labels: torch.Tensor, lam: torch.Tensor, views: int, s):
    """Stage 2's (own loss, CAI loss or None, target at the label: VB) of modality m with sharded memories.

    The refined target's top-k over the unified memory comes from a gathered top-k; the own loss is a
    hard cross-entropy over the sharded shared-space memory; CAI's adjusted prediction is dense over
    the U shared labels and replicated on every rank. The infrared rows' gradient through the anchor
    memory uses its preview shard, as engine/step.py does with the whole memory.
    """
    feats, mine, labels_all, lam_all, row_weight = _gather_views(unit, views, labels, lam)
    unified, own_mem = memories.unified, memories.own[m]
    late = [memories.anchor_preview if (m == 1 and i == memories.anchor) else None for i in range(len(memories.own))]
    scores = [unified.local_logits(f).detach() for f in feats]  # V x (B_all x U_local)
    own_graph, own_values, cai_graph, cai_values, t_at = 0.0, [], 0.0, [], []
    for v, f in enumerate(feats):
        index, weight = sparse_targets(scores[(v + 1) % views], unified.start, unified.num_clusters, labels_all,
                                       lam_all, s.topk, s.soft_targets)  # B_all x (k + 1)
        t_at.append((weight * (index == labels_all[:, None])).sum(1)[mine])
        rows = own_mem.rows_of(labels_all)[:, None]
        z = split_scores(f, own_mem.shard, own_mem.temperature, late[m])
        g, r = soft_cross_entropy(z, own_mem.start, rows, torch.ones_like(rows, dtype=torch.float32), row_weight)
        own_graph = own_graph + g
        own_values.append(r[mine])
        if s.cai_weight > 0:
            probs = adjusted_probs(f, memories.own, memories.prior, unified.num_clusters, s.cai_temperature, late)
            r = -(weight * torch.log(probs.gather(1, index).clamp_min(1e-30))).sum(1)  # B_all, alike on every rank
            cai_graph = cai_graph + (row_weight * r).sum() / comm.world_size()
            cai_values.append(r.detach()[mine])
    own = _as_loss(own_graph, torch.cat(own_values).mean())
    cai = _as_loss(cai_graph, torch.cat(cai_values).mean()) if s.cai_weight > 0 else None
    return own, cai, torch.cat(t_at)
