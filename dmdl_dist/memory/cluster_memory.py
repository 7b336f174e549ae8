"""Cluster memory: one L2-normalised centroid per label, held as an explicit buffer.

The memory lives outside the DDP / DeepSpeed wrapper (a wrapped buffer would be broadcast
from rank 0 or cast to half precision by the engines) and is updated explicitly after the
optimizer step, never inside autograd (STYLE habit 4; the release's memories update inside their
autograd backward). A memory's rows carry labels: in stage 1 row c is cluster c; in stage 2 a
modality's memory holds one row per shared label present in that modality (the release's pids),
so `rows_of` maps labels to rows.
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


def scores(unit: torch.Tensor, centroids: torch.Tensor, temperature: float,
           backward_centroids: torch.Tensor | None = None) -> torch.Tensor:
    """unit . centroids^T / T; with backward_centroids, the gradient is taken against those instead.

    The release updates its memories inside autograd's backward, which runs the visible forward's
    nodes first: the infrared rows' gradient through the anchor memory is then computed with that
    memory already moved by the visible rows, while the loss value used it as it was. Passing the
    updated copy here reproduces that (tests/test_fidelity.py).
    """
    z = unit @ centroids.t() / temperature
    if backward_centroids is None:
        return z
    shift = unit @ (backward_centroids - centroids).t() / temperature
    return z + (shift - shift.detach())


def occurrence_rank(rows: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same value: [3, 1, 3, 3] -> [0, 0, 1, 2]."""
    n = rows.shape[0]
    if n == 0:
        return rows.new_zeros(0)
    order = torch.sort(rows, stable=True).indices  # equal values keep their order
    sorted_rows = rows[order]
    starts = torch.ones(n, dtype=torch.bool, device=rows.device)
    starts[1:] = sorted_rows[1:] != sorted_rows[:-1]
    position = torch.arange(n, device=rows.device)
    group_start = torch.cummax(torch.where(starts, position, torch.zeros_like(position)), 0).values
    rank = torch.empty_like(rows)
    rank[order] = position - group_start
    return rank


@torch.no_grad()
def sequential_update(
    memory: torch.Tensor, rows: torch.Tensor, feats: torch.Tensor, momentum: torch.Tensor | float
) -> None:
    """In place, sample by sample in the given order: m[r_i] <- normalise(a_i * m[r_i] + (1 - a_i) * f_i).

    memory: C x D; rows: n row indices (those outside [0, C) are skipped: absent labels, another
    shard's rows); feats: n x D unit features; momentum: a float or n per-sample values. This is the
    release's sequential rule (a centroid ends near its last samples), vectorised across rows: the
    k-th occurrences of distinct rows are independent, so one pass per occurrence rank suffices.
    """
    keep = (rows >= 0) & (rows < memory.shape[0])
    mom = torch.as_tensor(momentum, dtype=memory.dtype, device=memory.device)
    mom = mom.expand(rows.shape[0]) if mom.dim() == 0 else mom
    rows, feats, mom = rows[keep], feats[keep].to(memory.dtype), mom[keep]
    rank = occurrence_rank(rows)
    for k in range(int(rank.max()) + 1 if rank.numel() else 0):
        sel = rank == k
        r, a = rows[sel], mom[sel, None]  # distinct rows
        memory[r] = F.normalize(a * memory[r] + (1 - a) * feats[sel], dim=1)


def row_lookup(labels: torch.Tensor) -> torch.Tensor:
    """label -> row table (-1 where a label has no row) for rows carrying `labels` (distinct, >= 0)."""
    size = int(labels.max()) + 1 if labels.numel() else 0
    table = torch.full((size,), -1, dtype=torch.long, device=labels.device)
    table[labels] = torch.arange(labels.shape[0], device=labels.device)
    return table


def rows_of(table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rows of `labels` through a row_lookup table; -1 for labels without a row (and for labels < 0)."""
    out = torch.full_like(labels, -1, dtype=torch.long)
    inside = (labels >= 0) & (labels < table.shape[0])
    out[inside] = table[labels[inside]]
    return out


class ClusterMemory:
    """Centroids C x D whose row i carries label labels[i] (default: row i is label i)."""

    def __init__(self, centroids_: torch.Tensor, *, labels: torch.Tensor | None = None, temperature: float = 0.05,
                 momentum: float = 0.2):
        self.centroids = F.normalize(centroids_.detach().float(), dim=1).clone()  # C x D
        device = self.centroids.device
        self.labels = (torch.arange(self.centroids.shape[0], device=device) if labels is None
                       else torch.as_tensor(labels, dtype=torch.long, device=device))
        self._table = row_lookup(self.labels)
        self.temperature = temperature
        self.momentum = momentum

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def rows_of(self, labels: torch.Tensor) -> torch.Tensor:
        return rows_of(self._table, labels)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """feats: B x D (unit rows) -> B x C similarity / temperature; gradients flow to feats only."""
        return feats @ self.centroids.t() / self.temperature

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor, momentum: torch.Tensor | float | None = None) -> None:
        """Sequential momentum update of the rows of `labels`, in order (labels without a row are skipped).

        Callers pass features gathered from every rank in one global order, so all ranks agree.
        """
        self.update_rows(feats, self.rows_of(labels), momentum)

    @torch.no_grad()
    def update_rows(self, feats: torch.Tensor, rows: torch.Tensor,
                    momentum: torch.Tensor | float | None = None) -> None:
        sequential_update(self.centroids, rows, feats, self.momentum if momentum is None else momentum)

    def state_dict(self) -> dict:
        return {"centroids": self.centroids.cpu(), "labels": self.labels.cpu(), "temperature": self.temperature,
                "momentum": self.momentum}

    @classmethod
    def from_state_dict(cls, state: dict) -> ClusterMemory:
        return cls(state["centroids"], labels=state.get("labels"), temperature=state["temperature"],
                   momentum=state["momentum"])
