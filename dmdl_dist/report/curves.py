"""Per-epoch curves of a run as PNGs, every one FIGSIZE x DPI = 800 x 500 pixels."""

from __future__ import annotations

import math
from pathlib import Path

from dmdl_dist.report.files import save_figure
from dmdl_dist.report.history import MODALITY_TAGS

FIGSIZE = (8.0, 5.0)  # inches
DPI = 100  # -> 800 x 500 pixels
PIXELS = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))  # (width, height)
MODALITY_COLOURS = ("tab:blue", "tab:red")  # visible, infrared, also in the gap picture


def plot_curves(history: list[dict], out_dir: str | Path) -> list[Path]:
    """Writes losses.png, clusters.png, association.png (when a stage-2 epoch exists) and
    validation.png (when validation metrics exist) under `out_dir`; returns the paths written."""
    if not history:
        raise ValueError("no epoch records to plot; metrics.jsonl is empty or missing")
    out_dir = Path(out_dir)
    written = [_losses(history, out_dir / "losses.png"), _clusters(history, out_dir / "clusters.png")]
    if any(r["stage"] == 2 for r in history):
        written.append(_association(history, out_dir / "association.png"))
    if any("val_mAP" in r for r in history):
        written.append(_validation(history, out_dir / "validation.png"))
    return written


def _figure(ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _finish(fig, axes, history: list[dict], path: Path) -> Path:
    boundary = next((r["epoch"] - 0.5 for r in history if r["stage"] == 2), None)
    for ax in axes:
        if boundary is not None and boundary > history[0]["epoch"]:
            ax.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return save_figure(fig, path)


def _series(history: list[dict], value) -> list[float]:
    """One value per epoch; NaN where the record lacks it (matplotlib leaves a gap)."""
    out = []
    for rec in history:
        try:
            out.append(float(value(rec)))
        except (KeyError, IndexError, TypeError):
            out.append(math.nan)
    return out


def _losses(history: list[dict], path: Path) -> Path:
    fig, (ax,) = _figure()
    epochs = [r["epoch"] for r in history]
    names = list(dict.fromkeys(k for r in history for k in r["losses"]))
    for name in names:
        style = {"color": "black", "linestyle": "--"} if name == "total" else {}
        ax.plot(epochs, _series(history, lambda r, n=name: r["losses"][n]), marker="o", label=name, **style)
    ax.set_ylabel("mean loss over the epoch")
    ax.set_title("losses (dotted line: stage 2 starts)")
    return _finish(fig, [ax], history, path)


def _clusters(history: list[dict], path: Path) -> Path:
    fig, (left, right) = _figure(2)
    epochs = [r["epoch"] for r in history]
    for m, (tag, colour) in enumerate(zip(MODALITY_TAGS, MODALITY_COLOURS, strict=True)):
        left.plot(epochs, _series(history, lambda r, m=m: r["clusters"][m]), marker="o", color=colour, label=tag)
        right.plot(epochs, _series(history, lambda r, m=m: 100 * r["outliers"][m]), marker="o", color=colour,
                   label=tag)
    left.set_title("clusters per modality")
    left.set_ylabel("clusters")
    right.set_title("outliers per modality")
    right.set_ylabel("% of training images")
    return _finish(fig, [left, right], history, path)


def _association(history: list[dict], path: Path) -> Path:
    fig, (ax,) = _figure()
    stage2 = [r for r in history if r["stage"] == 2]
    epochs = [r["epoch"] for r in stage2]
    ax.plot(epochs, _series(stage2, lambda r: 100 * r["association_rate"]), marker="o", color="tab:purple",
            label="association rate")
    ax.set_ylabel("% of clusters with a partner in the other modality")
    ax.set_ylim(0, 105)
    ax.set_title("cross-modality association (stage 2)")
    return _finish(fig, [ax], stage2, path)


def _validation(history: list[dict], path: Path) -> Path:
    fig, (ax,) = _figure()
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, _series(history, lambda r: r["val_rank1"]), marker="o", label="rank-1")
    ax.plot(epochs, _series(history, lambda r: r["val_mAP"]), marker="s", label="mAP")
    ax.set_ylabel("%")
    ax.set_title("validation (held-out training identities)")
    return _finish(fig, [ax], history, path)
