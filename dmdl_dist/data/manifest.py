"""Dataset manifests: one Arrow table per dataset root, one row per image.

Every reader (SYSU-MM01, RegDB, LLCM, SynthVI) yields the same schema, so samplers,
protocols and the clustering service never look at a dataset's folder layout.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VISIBLE = 0
INFRARED = 1
MODALITY_NAMES = {VISIBLE: "visible", INFRARED: "infrared"}

# path: relative to the dataset root, '/'-separated. pid: the dataset's own identity number.
# camid: the dataset's camera number. modality: VISIBLE or INFRARED. split: train, val or test.
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("pid", pa.int64()),
        ("camid", pa.int16()),
        ("modality", pa.int8()),
        ("split", pa.string()),
    ]
)
SPLITS = ("train", "val", "test")


def make_manifest(paths, pids, camids, modalities, splits) -> pa.Table:
    """Builds a manifest table from parallel sequences, checking the schema."""
    table = pa.table(
        {
            "path": pa.array(list(paths), pa.string()),
            "pid": pa.array(np.asarray(pids, dtype=np.int64)),
            "camid": pa.array(np.asarray(camids, dtype=np.int16)),
            "modality": pa.array(np.asarray(modalities, dtype=np.int8)),
            "split": pa.array(list(splits), pa.string()),
        },
        schema=SCHEMA,
    )
    bad = set(table.column("split").unique().to_pylist()) - set(SPLITS)
    if bad:
        raise ValueError(f"manifest has unknown split(s) {sorted(bad)}; expected one of {SPLITS}")
    return table


def select(table: pa.Table, *, split: str | None = None, modality: int | None = None) -> pa.Table:
    """Rows of one split and/or one modality, in their original order."""
    mask = np.ones(table.num_rows, dtype=bool)
    if split is not None:
        mask &= np.asarray(table.column("split").to_pylist()) == split
    if modality is not None:
        mask &= table.column("modality").to_numpy() == modality
    return table.filter(pa.array(mask))


def columns(table: pa.Table) -> dict[str, np.ndarray]:
    """The manifest's columns as numpy arrays (path as an object array)."""
    return {
        "path": np.asarray(table.column("path").to_pylist(), dtype=object),
        "pid": table.column("pid").to_numpy(),
        "camid": table.column("camid").to_numpy(),
        "modality": table.column("modality").to_numpy(),
        "split": np.asarray(table.column("split").to_pylist(), dtype=object),
    }


def write_parquet(table: pa.Table, path: Path) -> None:
    """Writes atomically: a crash leaves the old file or none, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name per writer: processes on several hosts may write the same cache at once.
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_parquet(path: Path) -> pa.Table:
    table = pq.read_table(path)
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"{path} is not a dmdl_dist manifest (schema {table.schema}); delete it to rebuild")
    return table
