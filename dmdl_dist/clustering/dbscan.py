"""DBSCAN pseudo-labels on a sparse precomputed distance matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN


def dbscan_labels(dist: sp.csr_matrix, eps: float, min_samples: int = 4) -> np.ndarray:
    """Cluster ids 0..C-1 per row, -1 for outliers.

    `dist` stores the pairs below distance 1 (jaccard_distance's output); absent pairs are at 1
    and never neighbours, which holds for any eps < 1. Pairs above eps are dropped before sklearn
    sees the graph: same labels, less work.
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1) for a sparse Jaccard matrix (absent pairs are at 1), got {eps}")
    dist = sp.csr_matrix(dist)
    keep = dist.data <= eps
    graph = sp.csr_matrix((dist.data[keep], dist.indices[keep], np.r_[0, np.cumsum(keep)][dist.indptr]),
                          shape=dist.shape)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)
    return labels.astype(np.int64)
