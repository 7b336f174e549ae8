"""The modality gap: test features of a few identities at a point of training, and how far apart
an identity's visible and infrared images lie.

The trainer saves one snapshot per milestone under RUN_DIR/gap/ (untrained.npz, stage1.npz,
stage2.npz); the report draws them side by side with gap_plot.plot_gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dmdl_dist.config import Config
from dmdl_dist.data.manifest import INFRARED, VISIBLE, columns
from dmdl_dist.engine.atomic import atomic_path
from dmdl_dist.report.features import picture_features

SNAPSHOT_KEYS = ("features", "modality", "pid")
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


def select_identities(manifest: pa.Table, *, n_ids: int = 20, per_id: int = 10, seed: int = 0) -> np.ndarray:
    """Row indices: up to n_ids identities seen in both modalities, up to per_id images of each per modality."""
    cols = columns(manifest)
    pids, mods = cols["pid"], cols["modality"]
    shared = np.intersect1d(pids[mods == VISIBLE], pids[mods == INFRARED])
    if shared.size == 0:
        raise ValueError("no identity has images of both modalities in this manifest; nothing shows the gap")
    rng = np.random.default_rng(seed)
    rows = []
    for p in np.sort(rng.choice(shared, size=min(n_ids, shared.size), replace=False)):
        for m in (VISIBLE, INFRARED):
            candidates = np.flatnonzero((pids == p) & (mods == m))
            rows.append(np.sort(rng.choice(candidates, size=min(per_id, candidates.size), replace=False)))
    return np.concatenate(rows)


def gap_snapshot(
    model: torch.nn.Module,
    root: str | Path,
    manifest: pa.Table,
    cfg: Config,
    device: torch.device,
    *,
    n_ids: int = 20,
    per_id: int = 10,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """{"features": N x D float32, "modality": N int8, "pid": N int64} of a seeded subset of `manifest`.

    Pass the test manifest: the same seed picks the same images at every milestone, so snapshots compare.
    """
    rows = select_identities(manifest, n_ids=n_ids, per_id=per_id, seed=seed)
    cols = columns(manifest)
    feats = picture_features(model, root, cols["path"][rows], cfg, device)
    return {"features": feats.astype(np.float32), "modality": cols["modality"][rows].astype(np.int8),
            "pid": cols["pid"][rows].astype(np.int64)}


def save_snapshot(snapshot: dict[str, np.ndarray], path: str | Path) -> Path:
    """Writes a snapshot as .npz atomically (temporary file, then rename)."""
    missing = [k for k in SNAPSHOT_KEYS if k not in snapshot]
    if missing:
        raise ValueError(f"snapshot lacks {missing}; expected keys {SNAPSHOT_KEYS}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz
        np.savez(f, **{k: np.asarray(snapshot[k]) for k in SNAPSHOT_KEYS})
    return Path(path)


def load_snapshot(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in SNAPSHOT_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path} is not a gap snapshot: it lacks {missing} (expected {SNAPSHOT_KEYS})")
        return {k: data[k] for k in SNAPSHOT_KEYS}


def load_snapshots(folder: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Every *.npz under `folder` keyed by its title: milestones in training order, then others by name."""
    files = {p.stem: p for p in sorted(Path(folder).glob("*.npz"))}
    order = [s for s in MILESTONES if s in files] + sorted(s for s in files if s not in MILESTONES)
    return {MILESTONES.get(s, s): load_snapshot(files[s]) for s in order}
