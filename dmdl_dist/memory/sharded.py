"""The cluster memory split across ranks by contiguous cluster-id ranges (insightface's PartialFC design).

Rank r owns clusters [start, end) = shard_bounds(C, r, world): it holds only those centroids
(C/world x D), scores every gathered batch row against them, and updates them from the
gathered batch. Losses over the whole label space are assembled in memory/sharded_loss.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dmdl_dist.distributed import comm
from dmdl_dist.memory.cluster_memory import centroids, momentum_update


class ShardedClusterMemory:
    """This rank's slice of a C x D centroid memory; same update rule as ClusterMemory."""

    def __init__(self, shard: torch.Tensor, *, start: int, num_clusters: int, temperature: float = 0.05,
                 momentum: float = 0.2):
        if not 0 <= start <= start + shard.shape[0] <= num_clusters:
            raise ValueError(f"shard rows [{start}, {start + shard.shape[0]}) lie outside 0..{num_clusters}")
        self.shard = F.normalize(shard.detach().float(), dim=1).clone()  # C_local x D
        self.start = start
        self.num_clusters = num_clusters
        self.temperature = temperature
        self.momentum = momentum

    @property
    def end(self) -> int:
        return self.start + self.shard.shape[0]

    @classmethod
    def build(cls, feats: torch.Tensor, labels: torch.Tensor, num_clusters: int, *, rank: int | None = None,
              world: int | None = None, **kw) -> ShardedClusterMemory:
        """Centroids of this rank's clusters from gathered features (N x D) and labels (N)."""
        start, end = comm.shard_bounds(num_clusters, rank, world)
        own = (labels >= start) & (labels < end)
        return cls(centroids(feats[own], labels[own] - start, end - start), start=start, num_clusters=num_clusters,
                   **kw)

    @classmethod
    def from_full(cls, full: torch.Tensor, *, rank: int | None = None, world: int | None = None,
                  **kw) -> ShardedClusterMemory:
        start, end = comm.shard_bounds(full.shape[0], rank, world)
        return cls(full[start:end], start=start, num_clusters=full.shape[0], **kw)

    def local_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """feats: B x D (unit rows) -> B x C_local similarity / temperature, columns start..end-1."""
        return feats @ self.shard.t() / self.temperature

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor, momentum: torch.Tensor | float | None = None) -> None:
        """The owner's update from every rank's batch: labels outside [start, end) are skipped."""
        shifted = torch.where(labels >= 0, labels - self.start, labels)
        momentum_update(self.shard, feats, shifted, self.momentum if momentum is None else momentum)

    def full(self) -> torch.Tensor:
        """All centroids, C x D, gathered from every rank (for inspection and export, not training)."""
        return comm.all_gather_cat(self.shard)

    def state_dict(self) -> dict:
        return {"shard": self.shard.cpu(), "start": self.start, "num_clusters": self.num_clusters,
                "temperature": self.temperature, "momentum": self.momentum}


def reshard(states: Sequence[dict], rank: int, world: int) -> ShardedClusterMemory:
    """Rank `rank` of `world`'s shard from shards saved by any number of ranks (a checkpoint's)."""
    if not states:
        raise ValueError("no memory shards to load")
    states = sorted(states, key=lambda s: s["start"])
    total = states[0]["num_clusters"]
    covered = 0
    for s in states:
        if s["start"] != covered or s["num_clusters"] != total:
            raise ValueError(f"memory shards do not tile 0..{total}: a shard starts at {s['start']}, "
                             f"expected {covered}; is a rank's shard file missing from the checkpoint?")
        covered += s["shard"].shape[0]
    if covered != total:
        raise ValueError(f"memory shards cover {covered} of {total} clusters; a rank's shard file is missing")
    full = torch.cat([s["shard"] for s in states])
    return ShardedClusterMemory.from_full(full, rank=rank, world=world, temperature=states[0]["temperature"],
                                          momentum=states[0]["momentum"])
