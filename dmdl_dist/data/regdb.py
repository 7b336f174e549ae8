"""RegDB reader: one of the ten published train/test splits ("trials"), read from idx/.

Each split lists its images in four files, "<relative path> <label>" per line. Train and test
labels both count from 0 but name different people; they stay apart through the split column.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from dmdl_dist.data.layout import check_listed_files, missing, read_labelled_list, require
from dmdl_dist.data.manifest import INFRARED, VISIBLE, make_manifest

DATASET = "RegDB"
TRIALS = range(1, 11)
# file stem -> (modality, camid): the visible camera is camera 1, the thermal one camera 2.
SOURCES = {"visible": (VISIBLE, 1), "thermal": (INFRARED, 2)}
LAYOUT = """\
ROOT/
  Visible/Visible_female_front_1/...bmp    (any folders: idx files give paths relative to ROOT)
  Thermal/Thermal_female_front_1/...bmp
  idx/
    train_visible_1.txt ... train_visible_10.txt    lines "<relative path> <label>"
    train_thermal_1.txt ... train_thermal_10.txt
    test_visible_1.txt  ... test_visible_10.txt
    test_thermal_1.txt  ... test_thermal_10.txt"""


def regdb_trials_available(root: str | Path) -> list[int]:
    """The trials t whose test_visible_t.txt and test_thermal_t.txt are both present."""
    idx = Path(root) / "idx"
    return [t for t in TRIALS if all((idx / f"test_{stem}_{t}.txt").is_file() for stem in SOURCES)]


def read_regdb(root: str | Path, *, trial: int = 1) -> pa.Table:
    """Manifest of one trial: its train rows (split train) and test rows (split test), sorted by path."""
    root = require(DATASET, Path(root), LAYOUT, is_dir=True)
    idx = require(DATASET, root / "idx", LAYOUT, is_dir=True)
    paths, pids, camids, modalities, splits = [], [], [], [], []
    for split in ("train", "test"):
        for stem, (modality, camid) in SOURCES.items():
            index_file = idx / f"{split}_{stem}_{trial}.txt"
            if not index_file.is_file():
                hint = f"Trials with both test files here: {regdb_trials_available(root) or 'none'}."
                raise missing(DATASET, index_file, LAYOUT, hint)
            pairs = read_labelled_list(index_file)
            check_listed_files(DATASET, root, (rel for rel, _ in pairs), f"idx/{index_file.name}")
            for rel, label in pairs:
                paths.append(rel)
                pids.append(label)
                camids.append(camid)
                modalities.append(modality)
                splits.append(split)
    return make_manifest(paths, pids, camids, modalities, splits).sort_by("path")
