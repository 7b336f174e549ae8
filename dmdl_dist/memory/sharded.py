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
from dmdl_dist.memory.cluster_memory import centroids, row_lookup, rows_of, sequential_update


class ShardedClusterMemory:
    """This rank's slice of a C x D centroid memory; same labels, rows and update rule as ClusterMemory."""

    def __init__(self, shard: torch.Tensor, *, start: int, num_clusters: int, labels: torch.Tensor | None = None,
                 temperature: float = 0.05, momentum: float = 0.2):
        if not 0 <= start <= start + shard.shape[0] <= num_clusters:
            raise ValueError(f"shard rows [{start}, {start + shard.shape[0]}) lie outside 0..{num_clusters}")
        self.shard = F.normalize(shard.detach().float(), dim=1).clone()  # C_local x D
        self.start = start
        self.num_clusters = num_clusters
        device = self.shard.device
        # every rank knows every row's label (C ints): rows are found locally, only centroids are split
        self.labels = (torch.arange(num_clusters, device=device) if labels is None
                       else torch.as_tensor(labels, dtype=torch.long, device=device))
        self._table = row_lookup(self.labels)
        self.temperature = temperature
        self.momentum = momentum

    @property
    def end(self) -> int:
        return self.start + self.shard.shape[0]

    def rows_of(self, labels: torch.Tensor) -> torch.Tensor:
        """Global rows (0..C-1) of `labels`, -1 for labels without a row."""
        return rows_of(self._table, labels)

    @classmethod
    def build(cls, feats: torch.Tensor, labels: torch.Tensor, num_clusters: int, *, rank: int | None = None,
              world: int | None = None, **kw) -> ShardedClusterMemory:
        """Centroids of this rank's clusters from gathered features (N x D) and labels (N); row c is label c."""
        start, end = comm.shard_bounds(num_clusters, rank, world)
        own = (labels >= start) & (labels < end)
        return cls(centroids(feats[own], labels[own] - start, end - start), start=start, num_clusters=num_clusters,
                   **kw)

    @classmethod
    def from_full(cls, full: torch.Tensor, *, labels: torch.Tensor | None = None, rank: int | None = None,
                  world: int | None = None, **kw) -> ShardedClusterMemory:
        start, end = comm.shard_bounds(full.shape[0], rank, world)
        return cls(full[start:end], start=start, num_clusters=full.shape[0], labels=labels, **kw)

    def local_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """feats: B x D (unit rows) -> B x C_local similarity / temperature, columns start..end-1."""
        return feats @ self.shard.t() / self.temperature

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor, momentum: torch.Tensor | float | None = None) -> None:
        """The owner's update from every rank's batch: rows outside [start, end) are skipped."""
        self.update_rows(feats, self.rows_of(labels), momentum)

    @torch.no_grad()
    def update_rows(self, feats: torch.Tensor, rows: torch.Tensor,
                    momentum: torch.Tensor | float | None = None) -> None:
        """Sequential update of global `rows` (-1: skip); only this shard's rows change."""
        local = torch.where(rows >= 0, rows - self.start, rows)
        local = torch.where(local >= self.shard.shape[0], -1, local)
        sequential_update(self.shard, local, feats, self.momentum if momentum is None else momentum)

    def full(self) -> torch.Tensor:
        """All centroids, C x D, gathered from every rank (for inspection and export, not training)."""
        return comm.all_gather_cat(self.shard)

    def state_dict(self) -> dict:
        return {"shard": self.shard.cpu(), "start": self.start, "num_clusters": self.num_clusters,
                "labels": self.labels.cpu(), "temperature": self.temperature, "momentum": self.momentum}


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
    return ShardedClusterMemory.from_full(full, labels=states[0].get("labels"), rank=rank, world=world,
                                          temperature=states[0]["temperature"], momentum=states[0]["momentum"])
