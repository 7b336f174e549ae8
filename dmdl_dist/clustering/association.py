"""Cross-modality association of cluster centroids (DMDL stage 2), and the shared label space it defines.

Both matchers score a visible cluster v against an infrared cluster c by the cost DMDL's release
uses, 1 / exp(cos(v, c)) = exp(-cos): lower is closer, and monotone in the cosine, so the nearest
centroid is the most similar one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class Association:
    """Which cluster of the other modality each cluster is tied to (-1: none).

    vis_to_ir[v] = infrared cluster of visible cluster v (C_v entries); ir_to_vis[c] = visible
    cluster of infrared cluster c (C_i entries). Nearest-centroid matching fills one side only
    (many-to-one, the other side all -1); Hungarian matching fills both, consistently (one-to-one).
    """

    vis_to_ir: np.ndarray
    ir_to_vis: np.ndarray


def _cost(vis: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """exp(-cos) between centroids: C_v x C_i (rows need not be unit length)."""
    vis = np.asarray(vis, np.float64)
    ir = np.asarray(ir, np.float64)
    if vis.ndim != 2 or ir.ndim != 2 or vis.shape[1] != ir.shape[1]:
        raise ValueError(f"centroids must be C_v x D and C_i x D, got {vis.shape} and {ir.shape}")
    vis = vis / np.linalg.norm(vis, axis=1, keepdims=True).clip(1e-12)
    ir = ir / np.linalg.norm(ir, axis=1, keepdims=True).clip(1e-12)
    return np.exp(-(vis @ ir.T))


def associate_nearest(vis_centroids: np.ndarray, ir_centroids: np.ndarray, direction: str) -> Association:
    """Each cluster of the source modality is tied to the nearest cluster of the other (DMDL).

    "v2i": every visible cluster v gets vis_to_ir[v] = argmin_c cost[v, c]; an infrared cluster
    may receive several visible clusters or none; ir_to_vis is all -1. The shared label space
    is then the infrared clusters (pseudo_labels.shared_space). "i2v": the mirror image (every infrared
    cluster gets its nearest visible cluster; the label space is the visible clusters). DMDL's
    release runs "v2i" on even epochs of stage 2 and "i2v" on odd ones. Ties go to the lower id.
    """
    cost = _cost(vis_centroids, ir_centroids)
    n_v, n_i = cost.shape
    if direction == "v2i":
        target = cost.argmin(axis=1) if n_i else np.full(n_v, -1)
        return Association(target.astype(np.int64), np.full(n_i, -1, np.int64))
    if direction == "i2v":
        target = cost.argmin(axis=0) if n_v else np.full(n_i, -1)
        return Association(np.full(n_v, -1, np.int64), target.astype(np.int64))
    raise ValueError(f"direction must be 'v2i' (visible -> infrared) or 'i2v' (infrared -> visible), got {direction!r}")


def associate_hungarian(vis_centroids: np.ndarray, ir_centroids: np.ndarray) -> Association:
    """One-to-one matching of least total cost (as PGM and CCLNet use).

    min(C_v, C_i) pairs are tied; the larger side keeps |C_v - C_i| clusters unmatched (-1).
    """
    cost = _cost(vis_centroids, ir_centroids)
    rows, cols = linear_sum_assignment(cost)
    vis_to_ir = np.full(cost.shape[0], -1, np.int64)
    ir_to_vis = np.full(cost.shape[1], -1, np.int64)
    vis_to_ir[rows] = cols
    ir_to_vis[cols] = rows
    return Association(vis_to_ir, ir_to_vis)
