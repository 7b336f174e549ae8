"""Runs a data set's protocols on features: the glue under `dmdl eval-features`, `dmdl eval` and training.

Features come as a callable from manifest rows to an N x D array, so the same code serves
features read from a Parquet file and features extracted by a model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmdl_dist.data.datasets import load_manifest
from dmdl_dist.data.manifest import columns, select
from dmdl_dist.data.regdb import regdb_trials_available
from dmdl_dist.eval.protocols import evaluate_trials, llcm_trials, regdb_trial, sysu_trials

FeatureFn = Callable[[pa.Table], np.ndarray]  # manifest -> N x D features of its rows
DIRECTIONS = ("v2i", "i2v")


def protocol_names(dataset: str, *, mode: str | None = None, direction: str | None = None) -> list[str]:
    if dataset in ("sysu", "synthvi"):
        return [f"{dataset}-{m}" for m in ([mode] if mode else ["all", "indoor"])]
    return [f"{dataset}-{d}" for d in ([direction] if direction else DIRECTIONS)]


def evaluate_manifest(
    dataset: str,
    manifest: pa.Table,
    features: np.ndarray,
    *,
    mode: str | None = None,
    direction: str | None = None,
    trials: int = 10,
) -> dict[str, dict]:
    """Protocols of one manifest (for RegDB: one split). `features` align with the manifest rows."""
    out = {}
    for name in protocol_names(dataset, mode=mode, direction=direction):
        kind = name.rsplit("-", 1)[1]
        if dataset in ("sysu", "synthvi"):
            drawn = sysu_trials(manifest, kind, trials)
        elif dataset == "llcm":
            drawn = llcm_trials(manifest, kind, trials)
        elif dataset == "regdb":
            drawn = [regdb_trial(manifest, kind)]
        else:
            raise ValueError(f"unknown data set {dataset!r}; expected sysu, synthvi, regdb or llcm")
        out[name] = evaluate_trials(features, manifest, drawn)
    return out


def evaluate_dataset(
    dataset: str,
    root: str | Path,
    feature_fn: FeatureFn,
    *,
    mode: str | None = None,
    direction: str | None = None,
    trials: int = 10,
) -> dict[str, dict]:
    """Every protocol of a data set root; RegDB averages over all of its splits present under idx/."""
    if dataset != "regdb":
        manifest = load_manifest(dataset, root)
        test = select(manifest, split="test")
        return evaluate_manifest(dataset, test, feature_fn(test), mode=mode, direction=direction, trials=trials)
    splits = regdb_trials_available(root)
    if not splits:
        raise FileNotFoundError(f"no RegDB split under {Path(root) / 'idx'} (expected test_visible_1.txt ...)")
    merged: dict[str, dict] = {}
    for t in splits:
        manifest = load_manifest("regdb", root, trial=t)
        test = select(manifest, split="test")
        for name, res in evaluate_manifest("regdb", test, feature_fn(test), direction=direction).items():
            merged.setdefault(name, {"trials": []})["trials"].append(res["mean"])
    for res in merged.values():
        res["mean"] = {k: float(np.mean([r[k] for r in res["trials"]])) for k in res["trials"][0]}
    return merged


class MissingFeaturesError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def parquet_feature_fn(path: str | Path) -> FeatureFn:
    """Features from a Parquet file with columns `path` (relative, '/'-separated) and `feature`."""
    table = pq.read_table(path)
    for col in ("path", "feature"):
        if col not in table.column_names:
            raise ValueError(f"{path} has no column '{col}'; expected columns 'path' and 'feature' (list of float32)")
    index = {p: i for i, p in enumerate(table.column("path").to_pylist())}
    flat = table.column("feature").combine_chunks()
    dim = len(flat[0]) if len(flat) else 0
    matrix = np.asarray(flat.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-12)

    def lookup(manifest: pa.Table) -> np.ndarray:
        paths = columns(manifest)["path"]
        rows = [index.get(p, -1) for p in paths]
        absent = [p for p, r in zip(paths, rows, strict=True) if r < 0]
        if absent:
            raise MissingFeaturesError(
                f"{path} lacks features for {len(absent)} of the {len(paths)} images the protocol needs, "
                f"e.g. {', '.join(absent[:5])} (paths must be relative to the data set root, '/'-separated)"
            )
        return matrix[rows]

    return lookup


def write_features_parquet(path: str | Path, paths: list[str], features: np.ndarray) -> None:
    """The file `dmdl eval-features` reads; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, dim = features.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
    feats = pa.ListArray.from_arrays(offsets, pa.array(features.astype(np.float32).reshape(-1)))
    table = pa.table({"path": pa.array(paths, pa.string()), "feature": feats})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
