"""The modality-gap picture: one t-SNE panel per snapshot, PANEL_PX = 400 x 440 pixels each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmdl_dist.data.manifest import INFRARED, VISIBLE
from dmdl_dist.report.files import save_figure
from dmdl_dist.report.gap import between_identity_distance, cross_modality_distance

DPI = 100
PANEL_PX = (400, 440)  # width, height of one panel
# Modality picks the colour map and marker; the identity picks the shade within the map.
STYLE = {VISIBLE: ("Blues", "o", "visible"), INFRARED: ("Reds", "^", "infrared")}


def embed_2d(features: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """t-SNE to N x 2, perplexity adapted to N (sklearn needs perplexity < N)."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, the snapshot has {n}")
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    # Exact gradients beat Barnes-Hut below a thousand points (7 s -> well under 1 s for 400 here).
    method = "exact" if n <= 1000 else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                method=method, max_iter=500)
    return tsne.fit_transform(np.asarray(features, dtype=np.float32))


def plot_gap(snapshots: dict[str, dict[str, np.ndarray]], out_png: str | Path, *, seed: int = 0) -> Path:
    """One panel per snapshot (in dict order); each title gives the cross-modality centroid distance
    and its ratio to the between-identity distance."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if not snapshots:
        raise ValueError("no gap snapshots to plot")
    n = len(snapshots)
    fig = Figure(figsize=(n * PANEL_PX[0] / DPI, PANEL_PX[1] / DPI), dpi=DPI)
    for i, (title, snap) in enumerate(snapshots.items()):
        ax = fig.add_subplot(1, n, i + 1)
        feats, mods, pids = snap["features"], snap["modality"], snap["pid"]
        distance = cross_modality_distance(feats, mods, pids)
        ratio = distance / max(between_identity_distance(feats, pids), 1e-12)
        xy = embed_2d(feats, seed=seed)  # xy: N x 2
        ids = np.unique(pids)
        shade = 0.35 + 0.65 * np.searchsorted(ids, pids) / max(len(ids) - 1, 1)
        for m, (cmap, marker, label) in STYLE.items():
            sel = mods == m
            ax.scatter(xy[sel, 0], xy[sel, 1], c=colormaps[cmap](shade[sel]), marker=marker, s=18,
                       edgecolors="none", label=label)
        ax.set_title(f"{title}\ncross-modality distance {distance:.3f} ({ratio:.2f}x between ids)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"t-SNE of test features, {len(np.unique(next(iter(snapshots.values()))['pid']))} identities "
                 "(shade = identity)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)
