"""CAI, Causality-inspired Adjustment Intervention (DMDL, model level, stage 2).

Backdoor adjustment over the modality confounder M in {visible, infrared}:

    P(Y | do(X)) = sum_m P(Y | X, m) P(m)

P(Y | X, m) is the softmax of the feature against modality m's stage-2 memory, whose rows are
the shared labels present in that modality, each row's probability moved to its label; P(m) is
the share of pseudo-labelled training instances of modality m. The feature is thus scored by both
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


def adjusted_probs(scores: Sequence[torch.Tensor], row_labels: Sequence[torch.Tensor], prior: torch.Tensor,
                   num_shared: int) -> torch.Tensor:
    """P(Y | do(X)) over the shared label space: sum_m P(m) * softmax(scores_m) moved to the rows' labels.

    scores[m]: B x C_m, the features against modality m's memory (f . M_m^T / T), one column per shared
    label present in modality m; row_labels[m]: C_m (long, the shared label of each row); prior: M
    -> B x U. The gradient flows through every modality's scores (the release scores a feature
    against both memories).
    """
    b = scores[0].shape[0]
    adjusted = scores[0].new_zeros(b, num_shared)  # B x U
    for m, (z, labels) in enumerate(zip(scores, row_labels, strict=True)):
        adjusted = adjusted + prior[m] * z.new_zeros(b, num_shared).index_add(1, labels, torch.softmax(z, dim=1))
    return adjusted


def adaptive_momentum(target_at_label: torch.Tensor, momentum: float) -> torch.Tensor:
    """The unified memory's per-sample momentum m / max(t_y, m), t_y the refined target's value at the label.

    A sample whose target trusts its label (t_y = 1) moves the row as much as any (momentum m); one
    whose target has moved away from it (t_y <= m) leaves the row as it is (momentum 1).
    """
    return momentum / target_at_label.clamp_min(momentum)
