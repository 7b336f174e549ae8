"""Test protocols of SYSU-MM01, RegDB and LLCM over a manifest, as the papers evaluate them.

A protocol only says which manifest rows are queries, which rows form each trial's gallery,
which gallery entries a query must ignore, and which CMC variant applies; the numbers come
from ``metrics.rank_metrics``. Gallery draws replay the dataset authors' code exactly
(``random.seed(trial)`` then one ``random.choice`` over the sorted file names of each existing
identity/camera folder, identities in sorted order, cameras in protocol order), so a trial here
holds the same images as the corresponding trial in published results.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from dmdl_dist.data.manifest import INFRARED, MODALITY_NAMES, VISIBLE, columns
from dmdl_dist.eval.metrics import DEFAULT_RANKS, ProtocolError, rank_metrics

Direction = Literal["v2i", "i2v"]
# (query pids, gallery pids, query camids, gallery camids) -> Q x G bool, True = discard.
ExcludeRule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]

SYSU_QUERY_CAMS = (3, 6)
SYSU_GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}


def exclude_cam3_query_cam2_gallery(
    q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray
) -> np.ndarray:
    """SYSU-MM01: cam2 and cam3 share a room, so the dataset authors drop cam2 for cam3 queries."""
    return (np.asarray(q_cams)[:, None] == 3) & (np.asarray(g_cams)[None, :] == 2)


def exclude_same_id_same_cam(
    q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray
) -> np.ndarray:
    """LLCM: a gallery image of the query's own identity and camera number is discarded."""
    same_id = np.asarray(q_pids)[:, None] == np.asarray(g_pids)[None, :]
    return same_id & (np.asarray(q_cams)[:, None] == np.asarray(g_cams)[None, :])


@dataclass(frozen=True, eq=False)
class Trial:
    """One query/gallery draw of a protocol.

    Attributes:
        query: manifest row indices of the queries.
        gallery: manifest row indices of the gallery, in the protocol's order (it breaks ties).
        exclude: rule naming the gallery entries each query ignores; None keeps all.
        dedup_ranks: rank-k from the identity list with repeats removed (SYSU-MM01, LLCM).
    """

    query: np.ndarray
    gallery: np.ndarray
    exclude: ExcludeRule | None
    dedup_ranks: bool


def sysu_trials(manifest: pa.Table, mode: Literal["all", "indoor"] = "all", n_trials: int = 10) -> list[Trial]:
    """SYSU-MM01 infrared -> visible: queries are all test images of cams 3 and 6."""
    if mode not in SYSU_GALLERY_CAMS:
        raise ValueError(f"SYSU-MM01 mode must be one of {sorted(SYSU_GALLERY_CAMS)}, got {mode!r}")
    cols, test = _test_columns(manifest)
    query = np.flatnonzero(test & np.isin(cols["camid"], SYSU_QUERY_CAMS))
    if len(query) == 0:
        raise ProtocolError(f"manifest has no test images of the query cameras {SYSU_QUERY_CAMS}; is it SYSU-MM01's?")
    cams = SYSU_GALLERY_CAMS[mode]
    candidates = test & np.isin(cols["camid"], cams)
    if not candidates.any():
        raise ProtocolError(f"manifest has no test images of the {mode}-search gallery cameras {cams}")
    pids = np.unique(cols["pid"][test])
    groups = _groups_by_pid_cam(cols, candidates)
    return [
        Trial(query, _draw_gallery(groups, pids, cams, seed=t), exclude_cam3_query_cam2_gallery, dedup_ranks=True)
        for t in range(_check_trials(n_trials))
    ]


def llcm_trials(manifest: pa.Table, direction: Direction, n_trials: int = 10) -> list[Trial]:
    """LLCM: "v2i" is the paper's mode 1 (visible query), "i2v" mode 2 (infrared query)."""
    query_mod, gallery_mod = _modalities(direction)
    cols, test = _test_columns(manifest)
    query = np.flatnonzero(test & (cols["modality"] == query_mod))
    candidates = test & (cols["modality"] == gallery_mod)
    if len(query) == 0:
        raise ProtocolError(f"manifest has no {MODALITY_NAMES[query_mod]} test images for the LLCM {direction} query")
    if not candidates.any():
        raise ProtocolError(f"manifest has no {MODALITY_NAMES[gallery_mod]} test images for the LLCM {direction} "
                            "gallery")
    pids = np.unique(cols["pid"][test])
    cams = tuple(int(c) for c in np.unique(cols["camid"][candidates]))  # ascending, as the authors list them
    groups = _groups_by_pid_cam(cols, candidates)
    return [
        Trial(query, _draw_gallery(groups, pids, cams, seed=t), exclude_same_id_same_cam, dedup_ranks=True)
        for t in range(_check_trials(n_trials))
    ]


def regdb_trial(manifest: pa.Table, direction: Direction) -> Trial:
    """RegDB, one split (its manifest): every test image of one modality against the other's."""
    query_mod, gallery_mod = _modalities(direction)
    cols, test = _test_columns(manifest)
    query = np.flatnonzero(test & (cols["modality"] == query_mod))
    gallery = np.flatnonzero(test & (cols["modality"] == gallery_mod))
    for name, rows, mod in (("query", query, query_mod), ("gallery", gallery, gallery_mod)):
        if len(rows) == 0:
            raise ProtocolError(f"manifest has no {MODALITY_NAMES[mod]} test images for the RegDB {direction} {name}")
    return Trial(query, gallery, exclude=None, dedup_ranks=False)


def evaluate_trials(
    features: np.ndarray, manifest: pa.Table, trials: Sequence[Trial], ranks: Sequence[int] = DEFAULT_RANKS
) -> dict:
    """Scores every trial with cosine similarity and averages the metrics over trials.

    Args:
        features: N x D, L2-normalised, row i is the image of manifest row i.
        manifest: the manifest the trials were drawn from.
        trials: from sysu_trials, llcm_trials or [regdb_trial(...)].
        ranks: the rank-k entries to report.

    Returns:
        ``{"mean": {metric: value}, "trials": [{metric: value}, ...]}``, values in percent.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != manifest.num_rows:
        raise ValueError(f"features must be N x D with N = {manifest.num_rows} manifest rows, got {features.shape}")
    if not trials:
        raise ValueError("no trials to evaluate")
    cols = columns(manifest)
    pids, cams = cols["pid"], cols["camid"]
    per_trial = []
    for trial in trials:
        q, g = trial.query, trial.gallery
        sim = features[q] @ features[g].T  # sim: Q x G
        exclude = None if trial.exclude is None else trial.exclude(pids[q], pids[g], cams[q], cams[g])
        per_trial.append(
            rank_metrics(sim, pids[q], pids[g], exclude=exclude, dedup_ranks=trial.dedup_ranks, ranks=ranks)
        )
    mean = {key: float(np.mean([m[key] for m in per_trial])) for key in per_trial[0]}
    return {"mean": mean, "trials": per_trial}


def format_table(results: dict[str, dict]) -> str:
    """Fixed-width table, one row per named result (a metrics dict or an evaluate_trials output)."""
    keys = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
    heads = ("R1", "R5", "R10", "R20", "mAP", "mINP")
    width = max([len("protocol"), *(len(name) for name in results)])
    lines = [f"{'protocol':<{width}}" + "".join(f"{h:>8}" for h in heads)]
    for name, result in results.items():
        metrics = result.get("mean", result)
        cells = "".join(f"{metrics[k]:8.2f}" if k in metrics else f"{'-':>8}" for k in keys)
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


def _test_columns(manifest: pa.Table) -> tuple[dict[str, np.ndarray], np.ndarray]:
    cols = columns(manifest)
    test = cols["split"] == "test"
    if not test.any():
        raise ProtocolError("manifest has no rows with split == 'test'; build it from the dataset's test lists")
    return cols, test


def _modalities(direction: str) -> tuple[int, int]:
    if direction == "v2i":
        return VISIBLE, INFRARED
    if direction == "i2v":
        return INFRARED, VISIBLE
    raise ValueError(f"direction must be 'v2i' (visible query) or 'i2v' (infrared query), got {direction!r}")


def _check_trials(n_trials: int) -> int:
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    return n_trials


def _groups_by_pid_cam(cols: dict[str, np.ndarray], candidates: np.ndarray) -> dict[tuple[int, int], list[int]]:
    """Row indices of each (pid, camid) folder, sorted by path like the authors' sorted(listdir)."""
    groups: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for row in np.flatnonzero(candidates):
        key = (int(cols["pid"][row]), int(cols["camid"][row]))
        groups.setdefault(key, []).append((cols["path"][row], int(row)))
    return {key: [row for _, row in sorted(members)] for key, members in groups.items()}


def _draw_gallery(
    groups: dict[tuple[int, int], list[int]], pids: Iterable[int], cams: Sequence[int], seed: int
) -> np.ndarray:
    """One image per existing (pid, cam) folder; a private Random(seed) equals random.seed(seed).

    random.choice picks by index from the sequence length alone, so choosing among rows sorted
    by path picks the same image as choosing among the sorted paths.
    """
    rng = random.Random(seed)
    picked = [rng.choice(groups[(int(pid), cam)]) for pid in sorted(pids) for cam in cams if (int(pid), cam) in groups]
    return np.asarray(picked, dtype=np.int64)
