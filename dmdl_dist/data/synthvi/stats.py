"""How far SynthVI's cues carry within and across modalities, measured without training.

Two hand-made descriptors, each retrieving every test image of one modality among the test images
of the other (or of the same, itself left out):
  * colour: a joint RGB histogram of the image's centre, the cue a model learns first on visible
    images; it should retrieve visible -> visible far better than visible -> infrared (the bias);
  * shape: histograms of gradient orientation on the grey image, contrast-normalised per cell;
    what silhouettes and garment patterns look like in either modality (the shared cues).
A trained checkpoint adds a row of its own features (flip-averaged, cosine), so that what a model
learnt can be read the same way: a model that learnt the shortcut retrieves within a modality far
better than across. cues.py then asks which shared cues (sleeves, patterns, bags, ...) the wrong
cross-modality matches of each row agree on: the cues a model carries across modalities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from dmdl_dist.data.datasets import load_manifest
from dmdl_dist.data.manifest import MODALITY_NAMES, columns, select
from dmdl_dist.data.synthvi.cues import cue_table, load_identities, wrong_matches
from dmdl_dist.eval.metrics import rank_metrics

DIRECTIONS = (("visible", "visible"), ("visible", "infrared"), ("infrared", "infrared"), ("infrared", "visible"))
_SIZE = (32, 64)  # PIL's (width, height): the demo's input size


def colour_histogram(image: np.ndarray, bins: int = 8) -> np.ndarray:
    """Square root of the L1-normalised joint RGB histogram of the central half of the width."""
    h, w = image.shape[:2]
    centre = image[h // 16 : h - h // 16, w // 4 : w - w // 4].reshape(-1, 3).astype(np.int64) * bins // 256
    codes = (centre[:, 0] * bins + centre[:, 1]) * bins + centre[:, 2]
    hist = np.bincount(codes, minlength=bins**3).astype(np.float64)
    return np.sqrt(hist / hist.sum())


def shape_histogram(image: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
    """Unsigned gradient-orientation histograms of the grey image in cell x cell blocks, each L2-normalised."""
    grey = np.asarray(Image.fromarray(image).convert("L").resize(_SIZE, Image.BILINEAR), dtype=np.float64)
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    orientation = np.minimum((np.arctan2(gy, gx) % np.pi) / np.pi * bins, bins - 1).astype(np.int64)
    h, w = grey.shape
    ch, cw = h // cell, w // cell
    cell_index = (np.arange(h)[:, None] // cell) * cw + np.arange(w)[None, :] // cell
    codes = (cell_index * bins + orientation).ravel()
    hist = np.bincount(codes, weights=magnitude.ravel(), minlength=ch * cw * bins).reshape(ch * cw, bins)
    hist /= np.linalg.norm(hist, axis=1, keepdims=True) + 1e-6
    return hist.ravel()


def _normalised(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)  # centred over the set, so what every image shares does not dominate the cosine
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


class TestFeatures(NamedTuple):
    """Unit feature rows of SynthVI's test images, by descriptor or model, with their labels."""

    feats: dict[str, np.ndarray]  # "colour", "shape", then "model" (or "model1", "model2", ...)
    pids: np.ndarray
    modality: np.ndarray  # "visible" or "infrared" per image


def test_features(root: str | Path, checkpoints: Sequence[str | Path] = ()) -> TestFeatures:
    """Both hand-made descriptors, and each checkpoint's flip-averaged features, of every test image."""
    manifest = select(load_manifest("synthvi", root), split="test")  # the reader checks the layout
    test = columns(manifest)
    images = [np.asarray(Image.open(Path(root) / path).convert("RGB")) for path in test["path"]]
    feats = {name: _normalised(np.stack([describe(im) for im in images]))
             for name, describe in (("colour", colour_histogram), ("shape", shape_histogram))}
    for name, path in zip(model_names(len(checkpoints)), checkpoints, strict=True):
        from dmdl_dist.serve.inference import checkpoint_feature_fn

        f = checkpoint_feature_fn(path, root, progress=False)(manifest).astype(np.float64)
        feats[name] = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
    modality = np.array([MODALITY_NAMES[m] for m in test["modality"]])
    return TestFeatures(feats, np.asarray(test["pid"]), modality)


def retrieval_stats(root: str | Path, checkpoints: Sequence[str | Path] = ()) -> dict[str, dict[str, dict[str, float]]]:
    """{descriptor: {"visible->infrared": {"rank1": .., "mAP": ..}, ...}} over SynthVI's test ids.

    Each checkpoint adds the row "model" (several: "model1", "model2", ... in the order given).
    """
    return directions(test_features(root, checkpoints))


def directions(features: TestFeatures) -> dict[str, dict[str, dict[str, float]]]:
    """retrieval_stats of features already extracted (test_features), so several measures share one extraction."""
    return {name: _directions(x, features.pids, features.modality) for name, x in features.feats.items()}


def cue_use(root: str | Path, features: TestFeatures) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """(cues.cue_table of every row's wrong infrared->visible matches, the number of those matches per row)."""
    rows = {name: wrong_matches(x, features.pids, features.modality) for name, x in features.feats.items()}
    table = cue_table(load_identities(root), features.pids, rows)
    return table, {name: len(query) for name, (query, _) in rows.items()}


def model_names(n: int) -> list[str]:
    """The rows of n checkpoints: "model" alone, else "model1", "model2", ..."""
    return ["model"] if n == 1 else [f"model{i + 1}" for i in range(n)]


def _directions(feats: np.ndarray, pids: np.ndarray, modality: np.ndarray) -> dict[str, dict[str, float]]:
    """Rank-1 and mAP of every direction, each image a query among the other modality's (or its own, less itself)."""
    out = {}
    for q_mod, g_mod in DIRECTIONS:
        q, g = np.flatnonzero(modality == q_mod), np.flatnonzero(modality == g_mod)
        sim = feats[q] @ feats[g].T
        exclude = q[:, None] == g[None, :]  # an image never retrieves itself
        m = rank_metrics(sim, pids[q], pids[g], exclude=exclude, dedup_ranks=False, ranks=(1,))
        out[f"{q_mod}->{g_mod}"] = {"rank1": m["rank1"], "mAP": m["mAP"]}
    return out


def format_stats(stats: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per descriptor, Rank-1 / mAP per direction."""
    header = "descriptor  " + "  ".join(f"{f'{q[0].upper()}->{g[0].upper()}':>11}" for q, g in DIRECTIONS)
    lines = [header + "   (Rank-1 / mAP, %, SynthVI test ids, every image a query)"]
    for name, rows in stats.items():
        cells = [f"{rows[f'{q}->{g}']['rank1']:5.1f}/{rows[f'{q}->{g}']['mAP']:5.1f}" for q, g in DIRECTIONS]
        lines.append(f"{name:<10}  " + "  ".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)
