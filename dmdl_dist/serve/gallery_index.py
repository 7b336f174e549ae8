"""A folder of images as a faiss inner-product index, cached in the folder and rebuilt when stale.

The cache lives in GALLERY/.dmdl_index/ as a pair <checkpoint key>-<gallery key>.faiss (the index)
and .json (the relative image paths, in index order). The checkpoint key hashes the checkpoint's
content, so a copied or renamed checkpoint still hits; the gallery key hashes every image's path,
size and modification time, so adding, removing or rewriting an image misses. The .json is written
last: a crash between the two writes leaves no pair that looks complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmdl_dist.clustering.knn import faiss_module
from dmdl_dist.engine.atomic import atomic_path
from dmdl_dist.errors import DmdlError, MissingPathError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CACHE_DIR = ".dmdl_index"
_KEY_CHARS = 16  # hex digits of a hash kept in cache file names


class EmptyGalleryError(DmdlError, ValueError):
    """A gallery folder holds no images."""


@dataclass
class GalleryIndex:
    """paths[i] (relative to the gallery folder) is row i of the faiss index."""

    paths: list[str]
    index: object  # faiss.IndexFlatIP on the CPU


def list_gallery(gallery: str | Path) -> list[str]:
    """Relative POSIX paths of the images under `gallery` (recursive, sorted), the cache folder excluded."""
    gallery = Path(gallery)
    if not gallery.is_dir():
        raise MissingPathError(f"gallery folder {gallery} does not exist; give a folder of .jpg/.png/.bmp images")
    paths = sorted(
        p.relative_to(gallery).as_posix()
        for p in gallery.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and CACHE_DIR not in p.relative_to(gallery).parts
    )
    if not paths:
        raise EmptyGalleryError(
            f"gallery folder {gallery} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively)"
        )
    return paths


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content, read in 1 MiB chunks (about a second per GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gallery_digest(gallery: str | Path, paths: Sequence[str]) -> str:
    """SHA-256 of every image's relative path, size and modification time (nanoseconds)."""
    gallery = Path(gallery)
    records = []
    for path in paths:
        stat = (gallery / path).stat()
        records.append([path, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()


def cache_files(gallery: str | Path, checkpoint_key: str, gallery_key: str) -> tuple[Path, Path]:
    """(.faiss, .json) paths of the cache entry for one checkpoint and one state of the gallery."""
    stem = f"{checkpoint_key[:_KEY_CHARS]}-{gallery_key[:_KEY_CHARS]}"
    folder = Path(gallery) / CACHE_DIR
    return folder / f"{stem}.faiss", folder / f"{stem}.json"


def build_index(features: np.ndarray):
    """An exact inner-product index over features: N x D float32 with unit rows."""
    faiss = faiss_module()
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be N x D, got shape {x.shape}")
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def load_cached(
    gallery: str | Path, checkpoint_key: str, gallery_key: str, paths: Sequence[str]
) -> GalleryIndex | None:
    """The cached index for this checkpoint and gallery state, or None when there is none or it does not fit."""
    index_file, meta_file = cache_files(gallery, checkpoint_key, gallery_key)
    if not (index_file.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        index = faiss_module().read_index(str(index_file))
    except (OSError, ValueError, RuntimeError):  # a damaged entry is rebuilt, not fatal
        return None
    fits = (meta.get("checkpoint") == checkpoint_key and meta.get("gallery") == gallery_key
            and meta.get("paths") == list(paths) and index.ntotal == len(paths))
    return GalleryIndex(list(paths), index) if fits else None


def save_cached(gallery: str | Path, checkpoint_key: str, gallery_key: str, entry: GalleryIndex) -> Path:
    """Writes the entry and removes this checkpoint's entries for earlier states of the gallery."""
    index_file, meta_file = cache_files(gallery, checkpoint_key, gallery_key)
    with atomic_path(index_file) as tmp:
        faiss_module().write_index(entry.index, str(tmp))
    meta = {"checkpoint": checkpoint_key, "gallery": gallery_key, "paths": entry.paths}
    with atomic_path(meta_file) as tmp:
        tmp.write_text(json.dumps(meta))
    for old in meta_file.parent.glob(f"{checkpoint_key[:_KEY_CHARS]}-*"):
        if old not in (index_file, meta_file) and old.suffix in (".faiss", ".json"):
            old.unlink(missing_ok=True)
    return index_file


def search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores Q x k float32, rows Q x k int64), best first; k is clipped to the index size.

    On the CPU always: an exact search of a few queries costs less than moving the index to a GPU.
    """
    k = int(min(k, index.ntotal))
    if k < 1:
        raise ValueError(f"k must be at least 1 and the index non-empty (k={k}, index size {index.ntotal})")
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)
