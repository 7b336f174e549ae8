"""Ranked lists: each row a query image, then its top gallery images, correct ones framed green, wrong red.

Layout, fixed so that tests and readers can find things: every image sits in a cell of
CELL_PX = 100 x 200 pixels (column 0 the query, column k its rank-k gallery image), the image
fills the cell's AXES_IN_CELL box and its frame is drawn on that box's edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dmdl_dist.config import Config
from dmdl_dist.data.manifest import INFRARED, VISIBLE, columns
from dmdl_dist.engine.extract import picture_features
from dmdl_dist.report.files import save_figure

DPI = 100
CELL_PX = (100, 200)  # width, height of one image cell
AXES_IN_CELL = (0.1, 0.05, 0.8, 0.8)  # left, bottom, width, height as fractions of the cell
CORRECT, WRONG, QUERY = "#00c000", "#e00000", "#000000"
FRAME_PT = 3.0  # frame line width in points (about 4 pixels at DPI 100)


def figure_pixels(rows: int, top: int) -> tuple[int, int]:
    """(width, height) of a ranked-list PNG in pixels."""
    return (top + 1) * CELL_PX[0], rows * CELL_PX[1]


def frame_point(row: int, col: int) -> tuple[int, int]:
    """(x, y) pixel, from the top-left corner, at the middle of the left frame edge of one cell."""
    left, bottom, _, height = AXES_IN_CELL
    x = round((col + left) * CELL_PX[0])
    y = round((row + 1 - bottom - height / 2) * CELL_PX[1])
    return x, y


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Gallery indices of the k highest scores per query (Q x k); ties keep the gallery order."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be Q x G, got shape {scores.shape}")
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]


def ranked_list_figure(
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    root: str | Path,
    ranking: np.ndarray,
    query_pids: Sequence[int],
    gallery_pids: Sequence[int],
    out_png: str | Path,
    *,
    top: int = 10,
) -> Path:
    """Draws one row per query: the query, then gallery images ranking[q, :top] in rank order.

    Args:
        query_paths, gallery_paths: image paths relative to `root`.
        ranking: Q x >=top gallery indices, best first (see top_k).
        query_pids, gallery_pids: identities; a gallery image is correct when its pid is the query's.
        out_png: written atomically; its size is figure_pixels(Q, top).
    """
    from matplotlib.figure import Figure
    from PIL import Image

    ranking = np.asarray(ranking)
    n = len(query_paths)
    if ranking.ndim != 2 or ranking.shape[0] != n or ranking.shape[1] < top:
        raise ValueError(f"ranking must be {n} x >= {top} gallery indices, got shape {ranking.shape}")
    root = Path(root)
    width, height = figure_pixels(n, top)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)

    def cell(row: int, col: int, path: str, title: str, colour: str) -> None:
        left, bottom, w, h = AXES_IN_CELL
        ax = fig.add_axes(((col + left) / (top + 1), (n - 1 - row + bottom) / n, w / (top + 1), h / n))
        with Image.open(root / path) as img:
            ax.imshow(np.asarray(img.convert("RGB")), aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7, pad=2)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(FRAME_PT)

    for row in range(n):
        cell(row, 0, query_paths[row], f"query\nid {query_pids[row]}", QUERY)
        for rank, g in enumerate(ranking[row, :top], start=1):
            ok = gallery_pids[g] == query_pids[row]
            cell(row, rank, gallery_paths[g], f"{rank}. id {gallery_pids[g]}", CORRECT if ok else WRONG)
    return save_figure(fig, out_png)


def pick_queries(manifest: pa.Table, n: int, *, seed: int = 0, query_modality: int = INFRARED) -> np.ndarray:
    """Row indices of up to n queries of distinct identities that the other modality also shows (seeded)."""
    cols = columns(manifest)
    pids, mods = cols["pid"], cols["modality"]
    shared = np.intersect1d(pids[mods == query_modality], pids[mods != query_modality])
    if shared.size == 0:
        raise ValueError("no identity has images of both modalities in this manifest; cannot draw ranked lists")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(shared, size=min(n, shared.size), replace=False))
    return np.array([rng.choice(np.flatnonzero((pids == p) & (mods == query_modality))) for p in chosen])


def ranked_lists_for_run(
    model: torch.nn.Module,
    root: str | Path,
    manifest: pa.Table,
    cfg: Config,
    device: torch.device,
    out_png: str | Path,
    *,
    queries: int = 6,
    top: int = 10,
    seed: int = 0,
) -> Path:
    """SYSU-style infrared queries against every visible image of `manifest` (the test split), by cosine.

    The gallery is all visible images rather than one protocol trial's draw, and no camera is
    excluded: the picture shows what the model retrieves, the protocols give the numbers.
    """
    cols = columns(manifest)
    query_rows = pick_queries(manifest, queries, seed=seed, query_modality=INFRARED)
    gallery_rows = np.flatnonzero(cols["modality"] == VISIBLE)
    if gallery_rows.size < top:
        raise ValueError(f"the gallery has {gallery_rows.size} visible images, fewer than top={top}")
    rows = np.concatenate([query_rows, gallery_rows])
    feats = picture_features(model, root, cols["path"][rows], cfg, device)
    q, g = feats[: len(query_rows)], feats[len(query_rows):]
    ranking = top_k(q @ g.T, top)  # q @ g.T: Q x G cosine similarities
    return ranked_list_figure(
        list(cols["path"][query_rows]), list(cols["path"][gallery_rows]), root, ranking,
        cols["pid"][query_rows].tolist(), cols["pid"][gallery_rows].tolist(), out_png, top=top,
    )
