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
import torch.nn.functional as F

from dmdl_dist.clustering.refine import refined_targets
from dmdl_dist.clustering.refine import topk_softmax as dense_topk_softmax
from dmdl_dist.distributed import comm
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


def _gather_batch(views: Sequence[torch.Tensor], labels: torch.Tensor, lam: torch.Tensor):
    sizes = comm.all_gather_sizes(labels.shape[0], labels.device)  # once: every view has this batch's rows
    gathered = [comm.gather_with_grad(v, sizes) for v in views]
    mine = gathered[0][1]
    row_weight = torch.repeat_interleave(1.0 / sizes.float(), sizes)  # 1 / (batch of the row's rank)
    return ([g for g, _ in gathered], mine, comm.all_gather_cat(labels, sizes), comm.all_gather_cat(lam, sizes),
            row_weight)


def _as_loss(graph: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A scalar with the value of this rank's loss and the gradient of its share of the objective."""
    return value.detach() + (graph - graph.detach())


def sharded_contrast(
    views: Sequence[torch.Tensor], memory: ShardedClusterMemory, labels: torch.Tensor, lam: torch.Tensor,
    topk: int, refine: bool,
) -> torch.Tensor:
    """The memory loss of engine/step.py's _contrast with a sharded memory: views V x (B x D) unit features."""
    feats, mine, labels_all, lam_all, row_weight = _gather_batch(views, labels, lam)
    logits = [memory.local_logits(f) for f in feats]  # V x (B_all x C_local)
    graphs, values = [], []
    for v, z in enumerate(logits):
        other = logits[(v + 1) % len(logits)]
        index, weight = sparse_targets(other, memory.start, memory.num_clusters, labels_all, lam_all, topk, refine)
        graph, rows = soft_cross_entropy(z, memory.start, index, weight, row_weight)
        graphs.append(graph)
        values.append(rows[mine].mean())
    return _as_loss(torch.stack(graphs).mean(), torch.stack(values).mean())


def adjusted_log_probs(
    feats: torch.Tensor, memories: Sequence[ShardedClusterMemory], to_unified: Sequence[torch.Tensor],
    prior: torch.Tensor, num_unified: int, temperature: float,
) -> torch.Tensor:
    """CAI's log P(Y | do(X)) (models/cai.py) from sharded modality memories; B x U, the same on every rank."""
    part = feats.new_zeros(feats.shape[0], num_unified)  # B x U
    for m, (mem, mapping) in enumerate(zip(memories, to_unified, strict=True)):
        z = feats @ mem.shard.t() / temperature  # B x C_local
        probs = torch.exp(z - logsumexp(z)[:, None])  # this rank's columns of the softmax over all C_m
        part = part + prior[m] * feats.new_zeros(part.shape).index_add(1, mapping[mem.start : mem.end], probs)
    return torch.log(comm.replicated_sum(part).clamp_min(1e-12))


def sharded_cai_contrast(
    views: Sequence[torch.Tensor], memories: Sequence[ShardedClusterMemory], to_unified: Sequence[torch.Tensor],
    prior: torch.Tensor, num_unified: int, temperature: float, labels: torch.Tensor, lam: torch.Tensor, topk: int,
    refine: bool,
) -> torch.Tensor:
    """CAI's loss with sharded memories: the adjusted prediction is dense over the U shared labels."""
    feats, mine, labels_all, lam_all, row_weight = _gather_batch(views, labels, lam)
    scores = [adjusted_log_probs(f, memories, to_unified, prior, num_unified, temperature) for f in feats]
    graphs, values = [], []
    for v, s in enumerate(scores):
        other = scores[(v + 1) % len(scores)].detach()
        if refine:  # the scores are replicated, not sharded: the dense top-k applies
            target = refined_targets(dense_topk_softmax(other, min(topk, num_unified)), labels_all, lam_all)
        else:
            target = F.one_hot(labels_all.long(), num_unified).float()
        rows = -(target * torch.log_softmax(s, dim=1)).sum(1)  # B, alike on every rank
        graphs.append((row_weight * rows).sum() / comm.world_size())
        values.append(rows.detach()[mine].mean())
    return _as_loss(torch.stack(graphs).mean(), torch.stack(values).mean())
