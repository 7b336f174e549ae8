"""Pure loss functions on tensors: multi-kernel MMD (CBT's feature alignment), batch-hard triplet, cross-entropies.

Each follows the authors' release exactly (tests/test_fidelity.py checks them against its outputs):
the MMD is DAN_new of its utils/loss.py, the triplet its OriTripletLoss, both on the raw
(un-normalised) BN-neck features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, N x M, in the matmul form (a finite gradient at 0)."""
    return a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * a @ b.t()


def mmd_loss(x: torch.Tensor, y: torch.Tensor, kernels: int = 5, mul: float = 2.0) -> torch.Tensor:
    """Multi-kernel Gaussian MMD^2 between two views' features x and y (both B x D, rows paired), unbiased within views.

    The estimator of DAN (Long et al., ICML 2015) in the release's form: Gaussian kernels
    exp(-d^2 / s_i), s_i = base * mul ** (i - kernels // 2), base = the mean squared distance over
    distinct pairs of the pooled 2B rows (detached: the bandwidth follows the data, no gradient
    through it); within-view kernel sums leave out the diagonal and are divided by B (B - 1), the
    cross-view sums by B^2: [K_xx + K_yy] / (B (B - 1)) - [K_xy + K_yx] / B^2.
    """
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"mmd_loss needs two B x D views of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    b = x.shape[0]
    if b < 2:
        raise ValueError("mmd_loss needs at least 2 rows per view (its within-view terms leave out the diagonal)")
    total = torch.cat([x, y])  # 2B x D
    d2 = _squared_distances(total, total)  # 2B x 2B
    n = 2 * b
    base = d2.detach().sum() / (n * n - n) / mul ** (kernels // 2)
    k = sum(torch.exp(-d2 / (base * mul**i)) for i in range(kernels))  # 2B x 2B
    within = k[:b, :b].sum() - k[:b, :b].diagonal().sum() + k[b:, b:].sum() - k[b:, b:].diagonal().sum()
    cross = k[:b, b:].sum() + k[b:, :b].sum()
    return within / (b * (b - 1)) - cross / (b * b)


def triplet_loss(feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al., 2017) on raw features, as the release's OriTripletLoss.

    feats: B x D (not normalised), labels: B. Distances are Euclidean, sqrt(max(d^2, 1e-12)); each
    anchor takes its farthest positive (its own distance, 1e-6, counts among them) and its nearest
    negative; the loss is the mean hinge max(0, d_ap - d_an + margin) over the anchors that have a
    negative (all of them in a P x K batch; 0 if none has one). Samples labelled < 0 are left out.
    """
    keep = labels >= 0
    feats, labels = feats[keep], labels[keep]
    dist = _squared_distances(feats, feats).clamp_min(1e-12).sqrt()  # B x B
    same = labels.unsqueeze(0) == labels.unsqueeze(1)  # B x B, the diagonal included
    has_negative = (~same).any(1)
    if not has_negative.any():
        return feats.sum() * 0.0  # keeps the graph connected for DDP
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(1)  # B
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)  # B
    return F.relu(hardest_pos - hardest_neg + margin)[has_negative].mean()


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution: mean over rows of -sum_c target * log_softmax(logits).

    logits, target_probs: B x C. With one-hot targets this is the ordinary cross-entropy.
    """
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


def cross_entropy_of_probs(probs: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_c target * log(probs), for a prediction that is already a distribution (CAI's).

    probs, target_probs: B x C. The prediction is floored at 1e-30 (far below any value a softmax at
    temperature 0.05 reaches), so an entry with a zero target and a zero prediction adds 0, not nan.
    """
    return -(target_probs * torch.log(probs.clamp_min(1e-30))).sum(1).mean()
