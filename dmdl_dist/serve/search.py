"""`dmdl search`: the gallery images most similar to one query image, by a checkpoint's features.

Features are the flip-averaged test-time ones (`dmdl eval`'s), so scores are cosine similarities in
[-1, 1]; an exact copy of a gallery image scores 1. The gallery's index is cached in the gallery
folder (serve/gallery_index.py): a second search of the same folder with the same checkpoint only
extracts the query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from dmdl_dist.data.images import find_bad_images, image_problem
from dmdl_dist.engine.extract import extract_features
from dmdl_dist.errors import DmdlError, MissingPathError
from dmdl_dist.extras import require_faiss
from dmdl_dist.serve.gallery_index import (
    GalleryIndex,
    build_index,
    file_digest,
    gallery_digest,
    list_gallery,
    load_cached,
    save_cached,
    search_index,
)
from dmdl_dist.serve.inference import load_model

_SHOWN = 5  # unreadable gallery images an error lists
log = logging.getLogger(__name__)


class QueryImageError(DmdlError, ValueError):
    """The query file exists but is not a readable image."""


class GalleryImagesError(DmdlError, ValueError):
    """Some gallery images cannot be read."""


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 = most similar
    score: float  # cosine similarity
    path: str  # relative to the gallery folder


@dataclass
class SearchResult:
    query: Path
    gallery: Path
    hits: list[Hit]
    gallery_size: int
    cached: bool  # the gallery index came from the cache (no gallery extraction)


def check_query(query: str | Path) -> Path:
    """The query path, or MissingPathError / QueryImageError saying why it cannot be used."""
    query = Path(query)
    problem = image_problem(query)
    if problem == "missing":
        raise MissingPathError(f"query image {query} does not exist")
    if problem is not None:
        raise QueryImageError(f"query image {query} cannot be used: {problem}")
    return query


def gallery_index(
    model: torch.nn.Module,
    checkpoint_key: str,
    gallery: Path,
    paths: list[str],
    *,
    height: int,
    width: int,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
) -> tuple[GalleryIndex, bool]:
    """(index of the gallery's images `paths` (list_gallery), whether it came from the cache); extracts and
    caches on a miss."""
    gallery_key = gallery_digest(gallery, paths)
    cached = load_cached(gallery, checkpoint_key, gallery_key, paths)
    if cached is not None:
        return cached, True
    try:
        feats = extract_features(model, gallery, paths, height=height, width=width, device=device,
                                 batch_size=batch_size, workers=workers, flip=True,
                                 desc="gallery" if progress else None)  # G x D
    except Exception:  # decoding every image up front would read the gallery twice: look only on failure
        bad = find_bad_images(gallery, paths)
        if not bad:
            raise
        shown = "; ".join(f"{path}: {reason}" for path, reason in bad[:_SHOWN])
        raise GalleryImagesError(
            f"{len(bad)} of {len(paths)} images under {gallery} cannot be read ({shown}"
            f"{' ...' if len(bad) > _SHOWN else ''}); replace or delete them"
        ) from None
    entry = GalleryIndex(paths, build_index(feats))
    try:
        save_cached(gallery, checkpoint_key, gallery_key, entry)
    except OSError as err:  # a read-only gallery (a mounted data set) can still be searched
        log.warning("cannot cache the gallery index under %s (%s); the next search extracts again", gallery, err)
    return entry, False


def search(
    checkpoint: str | Path,
    gallery: str | Path,
    query: str | Path,
    *,
    top: int = 10,
    device: torch.device | None = None,
    progress: bool = False,
) -> SearchResult:
    """The `top` gallery images most similar to the query (fewer when the gallery is smaller).

    device: where the network runs (default: the checkpoint's train.device).
    """
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    require_faiss("dmdl search (the gallery index)")  # before any image or the checkpoint is read
    query, gallery = check_query(query), Path(gallery)
    paths = list_gallery(gallery)  # a missing or empty gallery fails before the checkpoint is read
    model, cfg = load_model(checkpoint, device)
    device = next(model.parameters()).device
    size = {"height": cfg.data.height, "width": cfg.data.width, "device": device}
    entry, cached = gallery_index(model, file_digest(checkpoint), gallery, paths, batch_size=cfg.train.eval_batch_size,
                                  workers=cfg.data.loader_workers, progress=progress, **size)
    feat = extract_features(model, query.parent, [query.name], flip=True, **size)  # 1 x D
    scores, rows = search_index(entry.index, feat, top)  # 1 x k each
    pairs = zip(scores[0], rows[0], strict=True)
    hits = [Hit(rank, float(s), entry.paths[r]) for rank, (s, r) in enumerate(pairs, start=1)]
    return SearchResult(query, gallery, hits, len(entry.paths), cached)


def format_hits(result: SearchResult) -> str:
    """A plain-text table: one line per hit with rank, score and path, under a one-line header."""
    source = "cached index" if result.cached else "index built now"
    lines = [f"query {result.query}: top {len(result.hits)} of {result.gallery_size} images under "
             f"{result.gallery} ({source})", f"{'rank':>4}  {'score':>7}  path"]
    lines += [f"{h.rank:>4}  {h.score:>7.4f}  {h.path}" for h in result.hits]
    return "\n".join(lines)

