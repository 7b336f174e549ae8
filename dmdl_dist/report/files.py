"""Atomic writes of the report's pictures (engine/atomic.py: temp file beside, then rename)."""

from __future__ import annotations

from pathlib import Path

from dmdl_dist.engine.atomic import atomic_path


def save_figure(fig, path: str | Path) -> Path:
    """Saves a matplotlib Figure as PNG through the Agg canvas (no pyplot, no global backend switch).

    No bbox_inches="tight": the PNG keeps the figure's size in pixels (figsize x dpi).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
    return Path(path)
