"""Pure loss functions on tensors: multi-kernel MMD (CBT step 3), batch-hard triplet, soft cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, N x M; the matmul form has a finite gradient at 0."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * a @ b.t()).clamp_min(0.0)


def mmd_loss(x: torch.Tensor, y: torch.Tensor, kernels: int = 5, mul: float = 2.0) -> torch.Tensor:
    """Multi-kernel Gaussian MMD^2 between samples x (N x D) and y (M x D); CBT's feature alignment.

    The estimator of DAN (Long et al., ICML 2015) as the field writes it: the sum of Gaussian
    kernels exp(-d^2 / s_i) with bandwidths s_i = base * mul ** (i - kernels // 2), base being the
    mean squared distance over distinct pairs of the pooled sample (detached: the bandwidth
    follows the data but is not a path for the gradient). Biased (V-statistic) form:
    mean k(x, x') + mean k(y, y') - 2 mean k(x, y). Returns a scalar, 0 for identical samples.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd_loss needs N x D and M x D inputs, got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    total = torch.cat([x, y])  # (N+M) x D
    d2 = _squared_distances(total, total)  # (N+M) x (N+M)
    count = total.shape[0]
    base = (d2.detach().sum() / max(count * count - count, 1)).clamp_min(1e-12)
    bandwidths = [base * mul ** (i - kernels // 2) for i in range(kernels)]
    k = sum(torch.exp(-d2 / s) for s in bandwidths)  # (N+M) x (N+M)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()


def triplet_loss(feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al., 2017) with a margin; feats B x D, labels B.

    Features are L2-normalised first and compared by Euclidean distance, sqrt(2 - 2 cos), which
    lies in [0, 2] and so gives the margin a fixed scale. Each anchor takes its farthest positive
    and nearest negative; samples with label < 0 (unclustered) are left out, as are anchors with
    no other positive or no negative. Returns the mean hinge over the anchors kept (0 if none).
    """
    keep = labels >= 0
    feats, labels = F.normalize(feats[keep], dim=1), labels[keep]
    dist = _squared_distances(feats, feats).clamp_min(1e-12).sqrt()  # B x B
    same = labels.unsqueeze(0) == labels.unsqueeze(1)  # B x B
    self_pair = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & ~self_pair, ~same
    valid = positive.any(1) & negative.any(1)
    if not valid.any():
        return feats.sum() * 0.0  # keeps the graph connected for DDP
    hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(1)  # B
    hardest_neg = dist.masked_fill(~negative, float("inf")).amin(1)  # B
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution: mean over rows of -sum_c target * log_softmax(logits).

    logits, target_probs: B x C. With one-hot targets this is the ordinary cross-entropy.
    """
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()
