"""Snapshots of test features for the modality-gap picture: plain .npz files the trainer saves at milestones.

RUN_DIR/gap/{untrained,stage1,stage2}.npz each hold the flip-averaged test features of the same
seeded images of a few identities; report/gap.py reads and draws them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dmdl_dist.config import Config
from dmdl_dist.data.manifest import INFRARED, VISIBLE, columns
from dmdl_dist.engine.atomic import atomic_path
from dmdl_dist.engine.extract import picture_features

SNAPSHOT_KEYS = ("features", "modality", "pid")


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
