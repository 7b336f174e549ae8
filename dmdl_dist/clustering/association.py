"""Cross-modality association of cluster centroids (DMDL stage 2), and the shared label space it defines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class Association:
    """Which cluster of the other modality each cluster is tied to (-1: none).

    vis_to_ir[v] = infrared cluster of visible cluster v; ir_to_vis[c] = visible cluster of
    infrared cluster c. Nearest-centroid matching fills one side (many-to-one); Hungarian
    matching fills both, consistently (one-to-one).
    """

    vis_to_ir: np.ndarray
    ir_to_vis: np.ndarray


def _cost(vis: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """1 / exp(cos): C_v x C_i, lower is closer (the cost DMDL's release uses)."""
    return np.exp(-(np.asarray(vis, np.float64) @ np.asarray(ir, np.float64).T))


def associate_nearest(vis_centroids: np.ndarray, ir_centroids: np.ndarray, direction: str) -> Association:
    """Each cluster of the source modality goes to the cheapest cluster of the other.

    "v2i": every visible cluster joins its nearest infrared cluster (infrared clusters may take
    several visible ones, or none). "i2v": the reverse. DMDL alternates the direction per epoch.
    """
    cost = _cost(vis_centroids, ir_centroids)
    n_v, n_i = cost.shape
    if direction == "v2i":
        return Association(cost.argmin(axis=1).astype(np.int64), np.full(n_i, -1, np.int64))
    if direction == "i2v":
        return Association(np.full(n_v, -1, np.int64), cost.argmin(axis=0).astype(np.int64))
    raise ValueError(f"direction must be 'v2i' or 'i2v', got {direction!r}")


def associate_hungarian(vis_centroids: np.ndarray, ir_centroids: np.ndarray) -> Association:
    """One-to-one matching of least total cost (PGM, CCLNet); the larger side keeps unmatched clusters."""
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
    0..U-1 with no gaps.
    """
    n_v, n_i = len(assoc.vis_to_ir), len(assoc.ir_to_vis)
    ir_id = np.where(assoc.ir_to_vis >= 0, assoc.ir_to_vis, n_v + np.arange(n_i))
    vis_id = np.where(assoc.vis_to_ir >= 0, ir_id[np.maximum(assoc.vis_to_ir, 0)], np.arange(n_v))
    used, inverse = np.unique(np.concatenate([vis_id, ir_id]), return_inverse=True)
    return inverse[:n_v].astype(np.int64), inverse[n_v:].astype(np.int64), len(used)


def unified_labels(
    vis_labels: np.ndarray, ir_labels: np.ndarray, assoc: Association
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-sample shared labels of both modalities (outliers stay -1) and their count."""
    vis_id, ir_id, n = shared_ids(assoc)
    vis_u = np.where(vis_labels >= 0, vis_id[np.maximum(vis_labels, 0)], -1)
    ir_u = np.where(ir_labels >= 0, ir_id[np.maximum(ir_labels, 0)], -1)
    return vis_u.astype(np.int64), ir_u.astype(np.int64), n
