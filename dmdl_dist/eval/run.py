"""Runs a data set's protocols on features: the glue under `dmdl eval-features`, `dmdl eval` and training.

Features come as a callable from manifest rows to an N x D array, so the same code serves
features read from a Parquet file and features extracted by a model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmdl_dist.data.datasets import DatasetLayoutError, load_manifest
from dmdl_dist.data.manifest import columns, select
from dmdl_dist.data.regdb import regdb_trials_available
from dmdl_dist.engine.atomic import atomic_path
from dmdl_dist.errors import DmdlError, MissingPathError
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
        raise DatasetLayoutError(f"RegDB: no split under {Path(root) / 'idx'} (expected test_visible_1.txt and "
                                 "test_thermal_1.txt ... test_thermal_10.txt)", Path(root) / "idx")
    merged: dict[str, dict] = {}
    for t in splits:
        manifest = load_manifest("regdb", root, trial=t)
        test = select(manifest, split="test")
        for name, res in evaluate_manifest("regdb", test, feature_fn(test), direction=direction).items():
            merged.setdefault(name, {"trials": []})["trials"].append(res["mean"])
    for res in merged.values():
        res["mean"] = {k: float(np.mean([r[k] for r in res["trials"]])) for k in res["trials"][0]}
    return merged


class MissingFeaturesError(DmdlError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class FeaturesFileError(DmdlError, ValueError):
    """A features file that cannot be evaluated: not Parquet, without the columns, or with malformed rows."""


def read_features(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(paths, N x D float32 features) of a Parquet file with columns `path` and `feature`, checked whole.

    Nothing malformed reaches a protocol: a file that is empty or not Parquet, lacks a column, has no
    rows, or has rows with null, NaN/infinite or differently sized features, or a path twice, is one
    FeaturesFileError naming each problem's count and a few of its paths.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"features file {path} does not exist")
    expected = "expected a Parquet file with columns 'path' (string) and 'feature' (list of float), as `dmdl " \
               "extract` writes"
    if path.stat().st_size == 0:
        raise FeaturesFileError(f"{path} is empty (0 bytes); {expected}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise FeaturesFileError(f"{path} is not a readable Parquet file ({_first_line(err)}); {expected}") from None
    absent = [c for c in ("path", "feature") if c not in table.column_names]
    if absent:
        raise FeaturesFileError(f"{path} has no column {' or '.join(map(repr, absent))} (it has "
                                f"{', '.join(table.column_names) or 'none'}); {expected}")
    if table.num_rows == 0:
        raise FeaturesFileError(f"{path} has no rows; {expected}")
    if not pa.types.is_string(table.schema.field("path").type) and \
            not pa.types.is_large_string(table.schema.field("path").type):
        raise FeaturesFileError(f"{path}: column 'path' holds {table.schema.field('path').type}; {expected}")
    feats = table.column("feature").combine_chunks()
    if not (_is_list(feats.type) and (pa.types.is_floating(feats.type.value_type)
                                      or pa.types.is_integer(feats.type.value_type))):
        raise FeaturesFileError(f"{path}: column 'feature' holds {feats.type}; {expected}")
    paths = table.column("path").to_pylist()
    names = np.asarray([p if p is not None else f"<row {i}: no path>" for i, p in enumerate(paths)], dtype=object)
    problems = []

    def check(mask: np.ndarray, what: str) -> None:
        if mask.any():
            problems.append(f"{int(mask.sum())} {what} ({_examples(names[mask])})")

    check(np.asarray(table.column("path").is_null()), "rows without a path")
    null = np.asarray(feats.is_null())
    check(null, "null features")
    lengths = np.asarray(pc.list_value_length(feats).fill_null(0))
    dim = int(np.bincount(lengths[~null]).argmax()) if (~null).any() else 0
    check(~null & (lengths != dim), f"features not of the common length {dim}")
    if dim == 0:
        problems.append("features of length 0")
    values = feats.flatten()  # the rows' values, in row order, list offsets applied
    rows_of_values = np.repeat(np.arange(len(lengths)), lengths)
    bad_value = np.zeros(len(lengths), dtype=bool)
    if values.null_count:
        bad_value[rows_of_values[np.asarray(values.is_null())]] = True
        check(bad_value, "features with null values")
    flat = np.asarray(values.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float64)
    not_finite = np.zeros(len(lengths), dtype=bool)
    not_finite[rows_of_values[~np.isfinite(flat)]] = True
    check(not_finite, "features with NaN or infinite values")
    unique, counts = np.unique(names, return_counts=True)
    if (counts > 1).any():
        problems.append(f"{int((counts > 1).sum())} paths listed more than once ({_examples(unique[counts > 1])})")
    if problems:
        raise FeaturesFileError(f"{path} cannot be evaluated, nothing was: {'; '.join(problems)}. Write the "
                                "features again (e.g. `dmdl extract`)")
    return paths, flat.astype(np.float32).reshape(len(paths), dim)


def _is_list(tp: pa.DataType) -> bool:
    return pa.types.is_list(tp) or pa.types.is_large_list(tp) or pa.types.is_fixed_size_list(tp)


def _examples(items, shown: int = 5) -> str:
    items = [str(x) for x in items]
    return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def parquet_feature_fn(path: str | Path) -> FeatureFn:
    """Features from a Parquet file with columns `path` (relative, '/'-separated) and `feature`.

    The whole file is checked here (read_features), before any protocol runs.
    """
    paths, matrix = read_features(path)
    index = {p: i for i, p in enumerate(paths)}
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-12)

    def lookup(manifest: pa.Table) -> np.ndarray:
        wanted = columns(manifest)["path"]
        rows = [index.get(p, -1) for p in wanted]
        absent = [p for p, r in zip(wanted, rows, strict=True) if r < 0]
        if absent:
            raise MissingFeaturesError(
                f"{path} lacks features for {len(absent)} of the {len(wanted)} images the protocol needs, "
                f"e.g. {', '.join(absent[:5])} (paths must be relative to the data set root, '/'-separated)"
            )
        return matrix[rows]

    return lookup


def write_features_parquet(path: str | Path, paths: list[str], features: np.ndarray) -> None:
    """The file `dmdl eval-features` reads; written atomically."""
    n, dim = features.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
    feats = pa.ListArray.from_arrays(offsets, pa.array(features.astype(np.float32).reshape(-1)))
    table = pa.table({"path": pa.array(paths, pa.string()), "feature": feats})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
