"""DBSCAN pseudo-labels on a sparse precomputed distance matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN


def _within(dist: sp.csr_matrix, eps: float) -> sp.csr_matrix:
    """The stored pairs at distance <= eps (explicit zeros kept), in memory proportional to what is kept."""
    kept = np.flatnonzero(dist.data <= eps)
    rows = np.searchsorted(dist.indptr, kept, side="right") - 1
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=dist.shape[0]))))
    return sp.csr_matrix((dist.data[kept], dist.indices[kept], indptr), shape=dist.shape)


def dbscan_labels(dist: sp.csr_matrix, eps: float, min_samples: int = 4) -> np.ndarray:
    """Cluster ids 0..C-1 per row, -1 for outliers (sklearn's DBSCAN on the precomputed graph).

    `dist` stores the pairs below distance 1 (jaccard_distance's output); absent pairs are at 1
    and never neighbours, which holds for any eps < 1. Pairs above eps are dropped before sklearn
    sees the graph: the same labels as on the dense matrix, far less work and memory.
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1) for a sparse Jaccard matrix (absent pairs are at 1), got {eps}")
    dist = sp.csr_matrix(dist)
    if dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square N x N distance matrix, got shape {dist.shape}")
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(_within(dist, eps))
    return labels.astype(np.int64)
