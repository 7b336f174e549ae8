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
    may receive several visible clusters or none; ir_to_vis is all -1. Through `unified_labels`
    the shared label space is then the infrared clusters. "i2v": the mirror image (every infrared
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


def shared_ids(assoc: Association) -> tuple[np.ndarray, np.ndarray, int]:
    """(shared id of each visible cluster, of each infrared cluster, number of shared ids).

    Tied clusters share one id; clusters tied to nothing keep an id of their own. Ids are
    0..U-1 with no gaps, numbered in the order of the target clusters: after "v2i" the shared id
    of infrared cluster c is c itself, after "i2v" that of visible cluster v is v.
    """
    n_v, n_i = len(assoc.vis_to_ir), len(assoc.ir_to_vis)
    ir_id = np.where(assoc.ir_to_vis >= 0, assoc.ir_to_vis, n_v + np.arange(n_i))
    vis_id = np.where(assoc.vis_to_ir >= 0, ir_id[np.maximum(assoc.vis_to_ir, 0)], np.arange(n_v))
    used, inverse = np.unique(np.concatenate([vis_id, ir_id]), return_inverse=True)
    return inverse[:n_v].astype(np.int64), inverse[n_v:].astype(np.int64), len(used)


def unified_labels(
    vis_labels: np.ndarray, ir_labels: np.ndarray, assoc: Association
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-sample shared labels of both modalities (outliers, -1, stay -1) and their count."""
    vis_labels = np.asarray(vis_labels)
    ir_labels = np.asarray(ir_labels)
    if vis_labels.max(initial=-1) >= len(assoc.vis_to_ir) or ir_labels.max(initial=-1) >= len(assoc.ir_to_vis):
        raise ValueError("labels name clusters the association does not know: build both from the same clustering")
    vis_id, ir_id, n = shared_ids(assoc)
    vis_u = np.where(vis_labels >= 0, vis_id[np.maximum(vis_labels, 0)] if len(vis_id) else -1, -1)
    ir_u = np.where(ir_labels >= 0, ir_id[np.maximum(ir_labels, 0)] if len(ir_id) else -1, -1)
    return vis_u.astype(np.int64), ir_u.astype(np.int64), n
