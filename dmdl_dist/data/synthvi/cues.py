"""Which of SynthVI's shared cues a descriptor or a trained model reads across modalities.

SynthVI records every identity's attributes (synthvi_identities.json), so a wrong match can be
inspected: when an infrared query's nearest visible image belongs to another identity, does that
identity wear the same kind of top, carry a bag too, have the same sleeves? A feature that reads a
cue in both modalities makes wrong matches that agree on it far more often than two test
identities drawn at random do (its chance level); a feature blind to the cue in one modality makes
wrong matches that agree on it at chance. The gap between the two says which shared cues a model
learnt to carry across modalities and which it ignores: the cues to enlarge, or to leave alone.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from dmdl_dist.errors import MissingPathError


def _pattern(garment: Mapping) -> str:
    """plain, checks, or stripes with their direction: what the garment's texture looks like in either modality."""
    kind = garment["pattern"]
    return f"stripes {garment['angle']:g}" if kind == "stripes" else kind


# Discrete attributes both modalities render (identity dict -> value). Left out: continuous body
# sizes (no pair is ever equal) and the bag's side (a horizontal flip changes it image by image).
SHARED_CUES: dict[str, Callable[[Mapping], object]] = {
    "top pattern": lambda a: _pattern(a["top"]),
    "bottom pattern": lambda a: _pattern(a["bottom"]),
    "long sleeves": lambda a: a["long_sleeves"],
    "shorts": lambda a: a["shorts"],
    "coat": lambda a: a["coat"],
    "long hair": lambda a: a["long_hair"],
    "hat": lambda a: a["hat"] is not None,
    "bag": lambda a: a["bag"] is not None,
    "backpack": lambda a: a["backpack"] is not None,
}


def load_identities(root: str | Path) -> dict[int, dict]:
    """pid -> the attributes SynthVI drew for it, as the generator recorded them."""
    path = Path(root) / "synthvi_identities.json"
    if not path.is_file():
        raise MissingPathError(f"{path} is missing: {root} is not a SynthVI data set written by `dmdl synth`; "
                               "generate one with `dmdl synth --out DIR`")
    return {int(pid): attrs for pid, attrs in json.loads(path.read_text()).items()}


def cue_values(identities: Mapping[int, Mapping], pids: Sequence[int]) -> dict[str, list]:
    """cue -> its value for each pid, in order."""
    return {cue: [value(identities[int(p)]) for p in pids] for cue, value in SHARED_CUES.items()}


def chance_agreement(values: Sequence) -> float:
    """The share of ordered pairs of distinct items with equal values: how often two identities drawn
    at random agree on the cue. Exact, sum over values of n (n - 1), over N (N - 1)."""
    n = len(values)
    if n < 2:
        return float("nan")
    return sum(c * (c - 1) for c in Counter(values).values()) / (n * (n - 1))


def wrong_matches(feats: np.ndarray, pids: np.ndarray, modality: np.ndarray,
                  query: str = "infrared", gallery: str = "visible") -> tuple[np.ndarray, np.ndarray]:
    """(query pids, pids of their nearest gallery image) for every query whose nearest gallery image
    (cosine of unit rows) shows another identity."""
    q, g = np.flatnonzero(modality == query), np.flatnonzero(modality == gallery)
    nearest = g[np.argmax(feats[q] @ feats[g].T, axis=1)]
    wrong = pids[nearest] != pids[q]
    return pids[q][wrong], pids[nearest][wrong]


def cue_agreement(
    identities: Mapping[int, Mapping], query_pids: Sequence[int], match_pids: Sequence[int]
) -> dict[str, float]:
    """cue -> the share of (query, wrong match) pairs that agree on it (NaN when there is no pair)."""
    if len(query_pids) == 0:
        return {cue: float("nan") for cue in SHARED_CUES}
    mine, theirs = cue_values(identities, query_pids), cue_values(identities, match_pids)
    return {cue: float(np.mean([a == b for a, b in zip(mine[cue], theirs[cue], strict=True)])) for cue in SHARED_CUES}


def cue_table(identities: Mapping[int, Mapping], test_pids: Sequence[int],
              rows: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    """{"chance": {cue: ..}, name: {cue: ..}, ...}: chance over the test identities, then each row's
    wrong matches (a row is wrong_matches' pair of pid arrays)."""
    values = cue_values(identities, sorted({int(p) for p in test_pids}))
    table = {"chance": {cue: chance_agreement(v) for cue, v in values.items()}}
    table.update({name: cue_agreement(identities, *pairs) for name, pairs in rows.items()})
    return table


def format_cue_table(table: Mapping[str, Mapping[str, float]], errors: Mapping[str, int]) -> str:
    """One row per cue, one column per descriptor or model (% of wrong infrared->visible matches that agree)."""
    names = list(table)
    width = max(8, *(len(n) for n in names))
    lines = ["wrong infrared->visible top-1 matches that agree with the query on a shared cue, % "
             "(chance: two test ids at random; far above chance = the cue is read in both modalities)",
             f"{'cue':<15}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for cue in SHARED_CUES:
        lines.append(f"{cue:<15}" + "".join(f"{100 * table[n][cue]:>{width + 2}.0f}" for n in names))
    lines.append(f"{'wrong matches':<15}" + "".join(
        f"{'-' if n == 'chance' else errors[n]:>{width + 2}}" for n in names))
    return "\n".join(lines)
