"""CAI, Causality-inspired Adjustment Intervention (DMDL, model level, stage 2).

Backdoor adjustment over the modality confounder M in {visible, infrared}:

    P(Y | do(X)) = sum_m P(Y | X, m) P(m)

P(Y | X, m) is the softmax of the feature against modality m's cluster memory, with each
cluster's probability moved to the shared (associated) label it belongs to; P(m) is the share
of pseudo-labelled training instances of modality m. The feature is thus scored by both
modalities' memories regardless of its own modality, which removes the modality shortcut
from the prediction the loss is taken against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def modality_prior(labelled_counts: Sequence[int], kind: str = "empirical") -> torch.Tensor:
    """P(m): the share of pseudo-labelled instances per modality, or uniform."""
    counts = torch.as_tensor(labelled_counts, dtype=torch.float32)
    if kind == "uniform" or counts.sum() <= 0:
        return torch.full_like(counts, 1.0 / len(counts))
    return counts / counts.sum()


def adjusted_log_probs(
    feats: torch.Tensor,
    memories: Sequence[torch.Tensor],
    to_unified: Sequence[torch.Tensor],
    prior: torch.Tensor,
    num_unified: int,
    temperature: float = 0.05,
) -> torch.Tensor:
    """log P(Y | do(X)) over the unified label space.

    feats: B x D (unit rows); memories[m]: C_m x D; to_unified[m]: C_m (long, unified id of each
    cluster of modality m); prior: M -> B x U.
    """
    adjusted = feats.new_zeros(feats.shape[0], num_unified)  # B x U
    for m, (mem, mapping) in enumerate(zip(memories, to_unified, strict=True)):
        probs = torch.softmax(feats @ mem.t() / temperature, dim=1)  # B x C_m
        in_unified = feats.new_zeros(feats.shape[0], num_unified).index_add(1, mapping, probs)  # B x U
        adjusted = adjusted + prior[m] * in_unified
    return torch.log(adjusted.clamp_min(1e-12))


def adaptive_momentum(confidence: torch.Tensor, momentum: float) -> torch.Tensor:
    """Per-sample momentum m / max(confidence, m): low-confidence samples leave the memory as it is."""
    return momentum / confidence.clamp_min(momentum)
