"""One entry point for every data set: `load_manifest(name, root)`, cached as Parquet.

Walking SYSU-MM01's 46k files takes seconds on a local disk and much longer on a network
file system, and every rank of every run needs the manifest, so it is read once and cached.
The cache key holds a cheap fingerprint of the layout (names, sizes and mtimes of the entries
one and two levels below the root, which include the index files and the identity folders),
so adding, removing or rewriting an index file or an identity folder re-reads the data set.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pyarrow as pa

from dmdl_dist.data import llcm, sysu
from dmdl_dist.data.layout import DatasetLayoutError
from dmdl_dist.data.llcm import read_llcm
from dmdl_dist.data.manifest import read_parquet, write_parquet
from dmdl_dist.data.regdb import read_regdb
from dmdl_dist.data.sysu import read_sysu

__all__ = ["DATASETS", "DatasetLayoutError", "load_manifest", "manifest_cache_path", "require_training_part"]

DATASETS = ("sysu", "regdb", "llcm", "synthvi")
CACHE_VERSION = 1  # bump when a reader's output changes for the same files
_ROOT_PREFIX = ".dmdl_manifest-"  # hidden, so the fingerprint never sees its own cache


def _reader(name: str, *, trial: int, holdout_val: bool) -> tuple[Callable[[Path], pa.Table], str]:
    """The reader bound to its options, and a file-name tag for those options."""
    if name in ("sysu", "synthvi"):
        return partial(read_sysu, holdout_val=holdout_val), ("holdout" if holdout_val else "trainval")
    if name == "regdb":
        return partial(read_regdb, trial=trial), f"trial{trial}"
    if name == "llcm":
        return read_llcm, "all"
    raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")


def layout_fingerprint(root: Path) -> str:
    """Hash of (relative path, size, mtime) of the non-hidden entries one and two levels below root."""
    entries = []
    frontier = [(root, "")]
    for _ in range(2):
        below = []
        for folder, rel in frontier:
            try:
                with os.scandir(folder) as scan:
                    found = [entry for entry in scan if not entry.name.startswith(".")]
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in found:
                stat = entry.stat()
                entries.append(f"{rel}{entry.name}\t{stat.st_size}\t{stat.st_mtime_ns}")
                if entry.is_dir():
                    below.append((Path(entry.path), f"{rel}{entry.name}/"))
        frontier = below
    return hashlib.sha1("\n".join(sorted(entries)).encode()).hexdigest()[:16]


def manifest_cache_path(
    name: str, root: str | Path, *, trial: int = 1, holdout_val: bool = False, cache_dir: Path | None = None
) -> Path:
    """Where load_manifest caches this manifest for the data set's current layout."""
    name = name.lower()
    root = Path(root)
    _, tag = _reader(name, trial=trial, holdout_val=holdout_val)
    key = f"{name}-{tag}-v{CACHE_VERSION}-{layout_fingerprint(root)}"
    if cache_dir is None and os.access(root, os.W_OK):
        return root / f"{_ROOT_PREFIX}{key}.parquet"
    folder = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "dmdl_dist" / "manifests"
    root_digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return folder / f"{root_digest}-{key}.parquet"


def load_manifest(
    name: str, root: str | Path, *, trial: int = 1, holdout_val: bool = False, cache_dir: Path | None = None
) -> pa.Table:
    """The manifest of a data set root, from the cache when its layout has not changed.

    Args:
        name: sysu, regdb, llcm or synthvi (read with the SYSU-MM01 reader).
        root: the data set's folder, in its published layout.
        trial: RegDB's split, 1..10.
        holdout_val: SYSU-MM01/SynthVI: keep val_id.txt's ids out of training, split "val".
        cache_dir: folder for the cache; default the root itself when writable, else
            ~/.cache/dmdl_dist/manifests.
    """
    name = name.lower()
    read, _ = _reader(name, trial=trial, holdout_val=holdout_val)
    path = manifest_cache_path(name, root, trial=trial, holdout_val=holdout_val, cache_dir=cache_dir)
    if path.is_file():
        try:
            return read_parquet(path)
        except (OSError, ValueError):  # unreadable or foreign file: rebuild it below
            pass
    table = read(Path(root))
    try:
        write_parquet(table, path)
    except OSError:  # a read-only root or cache folder only costs the next run a re-read
        return table
    _remove_stale(path)
    return table


def _remove_stale(current: Path) -> None:
    """Deletes caches of the same data set and options left by earlier layouts."""
    prefix = current.name[: current.name.rindex("-") + 1]
    for old in current.parent.glob(f"{prefix}*.parquet"):
        if old != current:
            old.unlink(missing_ok=True)


def require_training_part(name: str, root: str | Path, manifest: pa.Table) -> None:
    """Raises DatasetLayoutError when a manifest has no training rows: the root holds only the test part.

    Evaluation reads such a tree (test ids and images only); training needs the files named here.
    """
    if "train" in manifest.column("split").unique().to_pylist():
        return
    needs = {
        "sysu": (sysu.DATASET, sysu.TRAINING_PART, sysu.LAYOUT),
        "synthvi": ("SynthVI", sysu.TRAINING_PART, sysu.LAYOUT),
        "llcm": (llcm.DATASET, llcm.TRAINING_PART, llcm.LAYOUT),
    }
    dataset, files, layout = needs.get(name.lower(), (name, (), ""))
    listed = f" ({' and '.join(files)} and the images they list)" if files else ""
    layout = f"\nExpected layout:\n{layout}" if layout else ""
    raise DatasetLayoutError(
        f"{dataset} at {root} holds no training images: training needs its training part{listed}. A test-only "
        f"copy serves `dmdl eval` and `dmdl eval-features`.{layout}", root)
