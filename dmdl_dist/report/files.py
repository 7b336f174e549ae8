"""Atomic writes: a temporary file in the same folder, then a rename, so readers never see half a file."""

from __future__ import annotations

import os
from pathlib import Path


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_figure(fig, path: str | Path) -> Path:
    """Saves a matplotlib Figure as PNG through the Agg canvas (no pyplot, no global backend switch).

    No bbox_inches="tight": the PNG keeps the figure's size in pixels (figsize x dpi).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = _tmp(path)
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
