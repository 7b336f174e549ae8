"""Cluster memory: one L2-normalised centroid per pseudo-identity, held as an explicit buffer.

The memory lives outside the DDP / DeepSpeed wrapper (a wrapped buffer would be broadcast
from rank 0 or cast to half precision by the engines) and is updated explicitly after the
optimizer step, never inside autograd (STYLE habit 4; cluster-contrast's ClusterMemory does
the latter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def centroids(features: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean feature of each cluster, L2-normalised; rows with label < 0 are ignored.

    features: N x D, labels: N -> C x D. A cluster with no member gets a zero row.
    """
    keep = labels >= 0
    feats, labs = features[keep], labels[keep]
    sums = features.new_zeros(num_clusters, features.shape[1]).index_add_(0, labs, feats)  # C x D
    return F.normalize(sums, dim=1)


@torch.no_grad()
def momentum_update(
    memory: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, momentum: torch.Tensor | float
) -> None:
    """In place: m_c <- normalise(mom * m_c + (1 - mom) * mean of the batch features labelled c).

    memory: C x D; feats: B x D; labels: B (rows < 0 or >= C are skipped, which lets a shard
    receive every rank's batch with labels shifted to its own range). `momentum` may be per
    sample (B,): a cluster then uses the mean momentum of its samples, which lets
    low-confidence samples barely move it (DMDL's confidence-adaptive update). Vectorised with
    index_add_.
    """
    C = memory.shape[0]
    keep = (labels >= 0) & (labels < C)
    mom = torch.as_tensor(momentum, dtype=torch.float32, device=feats.device)
    mom = mom.expand(labels.shape[0]) if mom.dim() == 0 else mom
    feats, labels, mom = feats[keep].detach().float(), labels[keep], mom[keep]
    if labels.numel() == 0:
        return
    count = feats.new_zeros(C).index_add_(0, labels, torch.ones_like(mom))  # C
    mean = feats.new_zeros(C, feats.shape[1]).index_add_(0, labels, feats)  # C x D
    mom_c = feats.new_zeros(C).index_add_(0, labels, mom)  # C
    touched = count > 0
    mean = mean[touched] / count[touched, None]
    m = (mom_c[touched] / count[touched])[:, None]
    memory[touched] = F.normalize(m * memory[touched] + (1 - m) * mean, dim=1)


class ClusterMemory:
    """Centroids C x D with a momentum update: m <- normalise(mom * m + (1 - mom) * mean(batch f of m))."""

    def __init__(self, centroids_: torch.Tensor, *, temperature: float = 0.05, momentum: float = 0.2):
        self.centroids = F.normalize(centroids_.detach().float(), dim=1).clone()  # C x D
        self.temperature = temperature
        self.momentum = momentum

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def to(self, device: torch.device | str) -> ClusterMemory:
        self.centroids = self.centroids.to(device)
        return self

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """feats: B x D (unit rows) -> B x C similarity / temperature; gradients flow to feats only."""
        return feats @ self.centroids.t() / self.temperature

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor, momentum: torch.Tensor | float | None = None) -> None:
        """Moves each touched centroid towards the mean of its batch features (see `momentum_update`).

        Callers pass features gathered from every rank so that all ranks apply the same update.
        """
        momentum_update(self.centroids, feats, labels, self.momentum if momentum is None else momentum)

    def state_dict(self) -> dict:
        return {"centroids": self.centroids.cpu(), "temperature": self.temperature, "momentum": self.momentum}

    @classmethod
    def from_state_dict(cls, state: dict) -> ClusterMemory:
        return cls(state["centroids"], temperature=state["temperature"], momentum=state["momentum"])
