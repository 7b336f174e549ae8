"""Retrieval metrics (CMC rank-k, mAP, mINP) with the exact semantics of the field's eval code.

The reference functions (eval_sysu, eval_regdb, eval_llcm of the AGW/PGM code base) loop over
queries in Python; this module computes the same numbers with whole-matrix numpy operations:

- Ranking is by descending similarity; ties keep gallery order (stable sort).
- Gallery entries excluded for a query (by the protocol's mask) are dropped from its ranked
  list before anything is counted, so ranks are ranks among the kept entries.
- A query with no positive among its kept entries is skipped for mAP, mINP and the standard
  CMC, and does not count in ``num_valid_q``.
- Standard CMC (RegDB): rank-k hit if the first positive has kept rank <= k.
- De-duplicated CMC (SYSU-MM01, LLCM): the kept ranked identities with repeats removed (first
  occurrence kept); rank-k hit if the query's identity is among the first k of that list. The
  reference adds this row for every query, valid or not (an invalid one adds zeros), and
  divides the sum by ``num_valid_q`` all the same.
- AP: mean over positives of (positives so far / kept rank). INP: number of positives / kept
  rank of the last positive (Ye et al., TPAMI 2021).

The reference clips max_rank to the gallery size; reading rank-k as "hit within the first k"
gives the same values for k beyond the list, so no clipping is needed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmdl_dist.errors import DmdlError


class ProtocolError(DmdlError, ValueError):
    """The images or features given cannot be evaluated by the protocol asked for (wrong data set, no matches)."""


DEFAULT_RANKS = (1, 5, 10, 20)
# Bounds the Q x G int64 temporaries of one chunk to about 16 MB each.
_CHUNK_ELEMENTS = 1 << 21


def rank_metrics(
    sim: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
    dedup_ranks: bool,
    ranks: Sequence[int] = DEFAULT_RANKS,
) -> dict[str, float]:
    """Rank-k, mAP and mINP in percent.

    Args:
        sim: Q x G similarity (higher is closer), e.g. cosine of L2-normalised features.
        q_pids: Q identities of the queries.
        g_pids: G identities of the gallery.
        exclude: optional Q x G bool, True where the gallery entry is discarded for that query.
        dedup_ranks: rank-k from the de-duplicated identity list (SYSU-MM01, LLCM) instead of
            the standard CMC (RegDB).
        ranks: the k of the rank-k entries returned (keys ``rank{k}``).

    Returns:
        ``{"rank1": ..., "rank5": ..., ..., "mAP": ..., "mINP": ...}``, all in percent.

    Raises:
        ValueError: on mismatched shapes, or when no query has a positive in its kept gallery.
    """
    sim = np.asarray(sim)
    q_pids = np.asarray(q_pids)
    g_pids = np.asarray(g_pids)
    num_q, num_g = sim.shape
    if q_pids.shape != (num_q,) or g_pids.shape != (num_g,):
        raise ValueError(f"sim is {sim.shape} but got {q_pids.shape} query and {g_pids.shape} gallery pids")
    if exclude is not None and exclude.shape != sim.shape:
        raise ValueError(f"exclude mask is {exclude.shape}, expected {sim.shape} like sim")
    ranks = tuple(int(k) for k in ranks)
    if any(k < 1 for k in ranks):
        raise ValueError(f"ranks must be >= 1, got {ranks}")

    # Dense identity codes let the de-duplicated CMC reduce per identity with reduceat.
    g_codes, q_codes, num_ids = _encode_pids(q_pids, g_pids)
    by_id = np.argsort(g_codes, kind="stable")  # gallery columns grouped by identity
    group_starts = np.searchsorted(g_codes[by_id], np.arange(num_ids))

    first_pos = np.full(num_q, num_g + 1, dtype=np.int64)  # kept rank of the first positive
    dedup_pos = np.full(num_q, num_g + 1, dtype=np.int64)  # rank of the query id, de-duplicated
    ap = np.zeros(num_q)
    inp = np.zeros(num_q)
    valid = np.zeros(num_q, dtype=bool)
    chunk = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
    for start in range(0, num_q, chunk):
        rows = slice(start, min(start + chunk, num_q))
        out = _chunk_stats(
            sim[rows],
            q_codes[rows],
            g_codes,
            None if exclude is None else np.asarray(exclude[rows], dtype=bool),
            by_id,
            group_starts,
            dedup_ranks,
        )
        first_pos[rows], dedup_pos[rows], ap[rows], inp[rows], valid[rows] = out

    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ProtocolError("no query has a true match in its (kept) gallery; check the protocol's query/gallery split")
    hit_pos = dedup_pos if dedup_ranks else first_pos
    # Invalid queries have hit_pos > G, so they add zeros to the CMC sum, as in the reference.
    metrics = {f"rank{k}": 100.0 * float(np.sum(hit_pos <= k)) / num_valid for k in ranks}
    metrics["mAP"] = 100.0 * float(ap[valid].mean())
    metrics["mINP"] = 100.0 * float(inp[valid].mean())
    return metrics


def _encode_pids(q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Gallery ids as 0..P-1; a query id absent from the gallery gets P (matches nothing)."""
    uniq, g_codes = np.unique(g_pids, return_inverse=True)
    pos = np.searchsorted(uniq, q_pids).clip(max=max(len(uniq) - 1, 0))
    present = (uniq[pos] == q_pids) if len(uniq) else np.zeros(len(q_pids), dtype=bool)
    q_codes = np.where(present, pos, len(uniq))
    return g_codes.reshape(-1), q_codes, len(uniq)


def _chunk_stats(
    sim: np.ndarray,
    q_codes: np.ndarray,
    g_codes: np.ndarray,
    exclude: np.ndarray | None,
    by_id: np.ndarray,
    group_starts: np.ndarray,
    dedup_ranks: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-query first-positive rank, de-duplicated rank, AP, INP and validity for a chunk."""
    num_q, num_g = sim.shape
    order = np.argsort(-sim, axis=1, kind="stable")  # order: q x G, gallery index by rank
    rows = np.arange(num_q)[:, None]
    keep = np.ones((num_q, num_g), dtype=bool) if exclude is None else ~exclude[rows, order]  # q x G, rank order
    matches = (g_codes[order] == q_codes[:, None]) & keep  # q x G
    kept_rank = np.cumsum(keep, axis=1)  # q x G: 1-based rank among kept entries
    pos_so_far = np.cumsum(matches, axis=1)  # q x G
    num_pos = pos_so_far[:, -1] if num_g else np.zeros(num_q, dtype=np.int64)
    valid = num_pos > 0

    big = num_g + 1
    first_pos = np.where(matches, kept_rank, big).min(axis=1, initial=big)
    last_pos = np.where(matches, kept_rank, 0).max(axis=1, initial=0)
    precision_sum = np.where(matches, pos_so_far / np.maximum(kept_rank, 1), 0.0).sum(axis=1)
    safe_pos = np.maximum(num_pos, 1)
    ap = np.where(valid, precision_sum / safe_pos, 0.0)
    inp = np.where(valid, num_pos / np.maximum(last_pos, 1), 0.0)

    dedup_pos = np.full(num_q, big, dtype=np.int64)
    if dedup_ranks and num_g and len(group_starts):
        # Raw rank of every gallery entry (excluded ones pushed past the end); the best raw rank
        # within an identity is that identity's first occurrence in the kept list.
        raw_rank = np.empty((num_q, num_g), dtype=np.int64)
        raw_rank[rows, order] = np.arange(num_g)
        if exclude is not None:
            raw_rank[exclude] = big
        first_of_id = np.minimum.reduceat(raw_rank[:, by_id], group_starts, axis=1)  # q x P
        has_query_id = q_codes < first_of_id.shape[1]
        own = first_of_id[rows[:, 0], np.minimum(q_codes, first_of_id.shape[1] - 1)]  # q
        # Its place in the de-duplicated list = 1 + identities whose first occurrence comes earlier.
        earlier = (first_of_id < own[:, None]).sum(axis=1)
        dedup_pos = np.where(has_query_id & (own < big), earlier + 1, big)
    return first_pos, dedup_pos, ap, inp, valid
