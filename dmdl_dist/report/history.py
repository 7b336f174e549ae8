"""A run's metrics.jsonl as epoch records, and each record as flat scalar tags.

The record keys are the trainer's (`_record` in engine/trainer.py): epoch, stage, losses{name},
clusters[V, I], outliers[V, I], k1[V, I], confidence[V, I], time{phase}, images_per_s, workers,
step_losses{name: [per step]}, in stage 2 anchor, num_shared, association_rate, matching, and
val_rank1/val_mAP when a validation split exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from dmdl_dist.errors import DmdlError

MODALITY_TAGS = ("visible", "infrared")


class HistoryError(DmdlError, ValueError):
    """A metrics.jsonl that is not one JSON record per epoch."""  # index = modality code (VISIBLE 0, INFRARED 1)


def read_history(path: str | Path) -> list[dict]:
    """Records of metrics.jsonl sorted by epoch; [] when the file does not exist.

    A resumed Ray run may append an epoch twice (the record is written before Ray registers the
    checkpoint); the later record wins.
    """
    path = Path(path)
    if not path.is_file():
        return []
    by_epoch: dict[int, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise HistoryError(f"{path} line {n} is not JSON ({err}); expected one record per epoch") from err
        if "epoch" not in rec:
            raise HistoryError(f"{path} line {n} has no 'epoch' key; is it a dmdl_dist metrics.jsonl?")
        by_epoch[int(rec["epoch"])] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def scalars(record: dict) -> dict[str, float]:
    """Every numeric field of one record under a TensorBoard-style tag, e.g. losses/memory, clusters/visible."""
    out: dict[str, float] = {}
    for name, value in record.get("losses", {}).items():
        out[f"losses/{name}"] = float(value)
    for key in ("clusters", "outliers", "k1", "confidence"):
        for tag, value in zip(MODALITY_TAGS, record.get(key, ()), strict=False):
            out[f"{key}/{tag}"] = float(value)
    for key in ("num_shared", "anchor", "association_rate", "images_per_s", "workers", "stage"):
        if isinstance(record.get(key), (int, float)):
            out[key] = float(record[key])
    for phase, seconds in record.get("time", {}).items():
        out[f"time/{phase}"] = float(seconds)
    for key in ("val_rank1", "val_mAP"):
        if key in record:
            out[f"val/{key[4:]}"] = float(record[key])
    return out
