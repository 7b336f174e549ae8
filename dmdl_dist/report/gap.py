"""The modality gap: test features of a few identities at a point of training, and how far apart
an identity's visible and infrared images lie.

The trainer saves one snapshot per milestone under RUN_DIR/gap/ (untrained.npz, stage1.npz,
stage2.npz; engine/snapshot.py); the report reads them and draws them side by side with gap_plot.plot_gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmdl_dist.data.manifest import INFRARED, VISIBLE
from dmdl_dist.engine.snapshot import load_snapshot

MILESTONES = {"untrained": "untrained", "stage1": "after stage 1", "stage2": "after stage 2"}  # file stem -> title


def cross_modality_distance(features: np.ndarray, modality: np.ndarray, pid: np.ndarray) -> float:
    """Mean over identities seen in both modalities of || mean visible feature - mean infrared feature ||.

    Features are L2-normalised row by row first, so the value lies in [0, 2] and does not depend
    on feature scale. Identities seen in one modality only are ignored.
    """
    features = np.asarray(features, dtype=np.float64)
    modality, pid = np.asarray(modality), np.asarray(pid)
    if features.ndim != 2 or not len(features) == len(modality) == len(pid):
        raise ValueError(f"need N x D features with N modality and pid entries, got {features.shape}, "
                         f"{modality.shape}, {pid.shape}")
    unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)  # unit: N x D
    distances = []
    for p in np.unique(pid):
        vis, ir = (pid == p) & (modality == VISIBLE), (pid == p) & (modality == INFRARED)
        if vis.any() and ir.any():
            distances.append(np.linalg.norm(unit[vis].mean(0) - unit[ir].mean(0)))
    if not distances:
        raise ValueError("no identity has features of both modalities; the cross-modality distance is undefined")
    return float(np.mean(distances))


def between_identity_distance(features: np.ndarray, pid: np.ndarray) -> float:
    """Mean distance between the mean L2-normalised features of two different identities (both modalities pooled).

    The yardstick for cross_modality_distance: an untrained network maps every image close to
    every other, so raw distances grow with training; their ratio says whether an identity's two
    modalities lie further apart (> 1) or closer (< 1) than two identities do.
    """
    features, pid = np.asarray(features, dtype=np.float64), np.asarray(pid)
    ids = np.unique(pid)
    if len(ids) < 2:
        raise ValueError("the between-identity distance needs at least two identities")
    unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
    centroids = np.stack([unit[pid == p].mean(0) for p in ids])  # centroids: P x D
    gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)  # gaps: P x P
    return float(gaps[np.triu_indices(len(ids), k=1)].mean())


def load_snapshots(folder: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Every *.npz under `folder` keyed by its title: milestones in training order, then others by name."""
    files = {p.stem: p for p in sorted(Path(folder).glob("*.npz"))}
    order = [s for s in MILESTONES if s in files] + sorted(s for s in files if s not in MILESTONES)
    return {MILESTONES.get(s, s): load_snapshot(files[s]) for s in order}
