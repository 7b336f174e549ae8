"""rank_metrics against hand-worked cases and a slow per-query loop following the reference eval code."""

import numpy as np
import pytest

from dmdl_dist.eval import metrics
from dmdl_dist.eval.metrics import rank_metrics


def _slow_reference(sim, q_pids, g_pids, exclude, dedup_ranks, max_rank):
    """Straight per-query loop in the style of eval_sysu / eval_regdb (CMC returned as fractions)."""
    num_q, num_g = sim.shape
    max_rank = min(max_rank, num_g)
    # Python's sort is stable: ties stay in gallery order.
    order_all = np.array([sorted(range(num_g), key=lambda j, row=row: -row[j]) for row in sim], dtype=np.int64)
    all_cmc, dedup_cmc, all_ap, all_inp = [], [], [], []
    num_valid = 0
    for i in range(num_q):
        order = order_all[i]
        keep = np.ones(num_g, dtype=bool) if exclude is None else ~exclude[i][order]
        ranked = g_pids[order][keep]
        _, first_index = np.unique(ranked, return_index=True)
        deduped = ranked[np.sort(first_index)]
        new_cmc = np.cumsum(deduped == q_pids[i])
        # The reference slices [:max_rank]; pad a shorter list with its last value (its natural extension).
        padded = np.zeros(max_rank)
        padded[: min(len(new_cmc), max_rank)] = new_cmc[:max_rank]
        if 0 < len(new_cmc) < max_rank:
            padded[len(new_cmc) :] = new_cmc[-1]
        dedup_cmc.append(padded)
        match = (ranked == q_pids[i]).astype(int)
        if not match.any():
            continue
        num_valid += 1
        cmc = match.cumsum()
        last = np.max(np.where(match == 1)[0])
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        full = np.ones(max_rank)
        full[: min(len(cmc), max_rank)] = cmc[:max_rank]
        all_cmc.append(full)
        precision = np.array([x / (k + 1.0) for k, x in enumerate(match.cumsum())]) * match
        all_ap.append(precision.sum() / match.sum())
    cmc = np.sum(dedup_cmc if dedup_ranks else all_cmc, axis=0) / num_valid
    return cmc, np.mean(all_ap), np.mean(all_inp)


def test_standard_cmc_hand_case():
    g_pids = np.array([1, 2, 1, 3, 2])
    q_pids = np.array([1, 2, 9])
    sim = np.array(
        [
            # ranked gallery 1,2,3,4,0 -> pids 2,1,3,2,1: positives at ranks 2 and 5.
            # AP = (1/2 + 2/5) / 2 = 0.45, INP = 2/5.
            [0.1, 0.9, 0.5, 0.3, 0.2],
            # ranked 1,3,0,2,4 -> pids 2,3,1,1,2: positives at 1 and 5. AP = (1 + 2/5) / 2 = 0.7, INP = 2/5.
            [0.2, 0.95, 0.1, 0.3, 0.05],
            # pid 9 is not in the gallery: skipped everywhere, not in the denominator.
            [0.5, 0.4, 0.3, 0.2, 0.1],
        ]
    )
    out = rank_metrics(sim, q_pids, g_pids, dedup_ranks=False, ranks=(1, 2, 5))
    assert out["rank1"] == pytest.approx(50.0)  # only query 1 hits at rank 1
    assert out["rank2"] == pytest.approx(100.0)
    assert out["rank5"] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx(100 * (0.45 + 0.7) / 2)
    assert out["mINP"] == pytest.approx(40.0)


def test_dedup_cmc_and_exclusion_hand_case():
    g_pids = np.array([1, 1, 2, 2, 3, 3])
    q_pids = np.array([3, 1, 1])
    sim = np.array(
        [
            # ranked 0,1,2,4,3,5 -> pids 1,1,2,3,2,3; gallery 1 excluded -> kept pids 1,2,3,2,3.
            # Standard first hit at kept rank 3; de-duplicated list 1,2,3 -> rank 3.
            # AP = (1/3 + 2/5) / 2 = 0.366667, INP = 2/5.
            [0.9, 0.8, 0.7, 0.5, 0.6, 0.4],
            # ranked 2,3,4,5,1,0 -> pids 2,2,3,3,1,1: first hit at 5, de-duplicated list 2,3,1 -> rank 3.
            # AP = (1/5 + 2/6) / 2 = 0.266667, INP = 2/6.
            [0.1, 0.2, 0.9, 0.8, 0.7, 0.6],
            # Both positives excluded: invalid, adds nothing and does not count.
            [0.9, 0.8, 0.1, 0.1, 0.1, 0.1],
        ]
    )
    exclude = np.zeros(sim.shape, dtype=bool)
    exclude[0, 1] = True
    exclude[2, [0, 1]] = True
    dedup = rank_metrics(sim, q_pids, g_pids, exclude=exclude, dedup_ranks=True, ranks=(1, 2, 3, 5))
    assert [dedup[k] for k in ("rank1", "rank2", "rank3", "rank5")] == pytest.approx([0, 0, 100, 100])
    assert dedup["mAP"] == pytest.approx(100 * ((1 / 3 + 2 / 5) / 2 + (1 / 5 + 2 / 6) / 2) / 2)
    assert dedup["mINP"] == pytest.approx(100 * (2 / 5 + 2 / 6) / 2)
    standard = rank_metrics(sim, q_pids, g_pids, exclude=exclude, dedup_ranks=False, ranks=(1, 3, 5))
    assert [standard[k] for k in ("rank1", "rank3", "rank5")] == pytest.approx([0, 50, 100])
    assert standard["mAP"] == pytest.approx(dedup["mAP"])  # mAP/mINP never use the de-duplicated list
    # Without the mask query 0 has its positives at ranks 4 and 6: AP (1/4 + 2/6) / 2, no rank-3 hit.
    plain = rank_metrics(sim[:2], q_pids[:2], g_pids, dedup_ranks=False, ranks=(3,))
    assert plain["rank3"] == pytest.approx(0.0)
    assert plain["mAP"] == pytest.approx(100 * ((1 / 4 + 2 / 6) / 2 + (1 / 5 + 2 / 6) / 2) / 2)


def test_ties_keep_gallery_order_and_short_gallery():
    # All similarities equal: the ranked list is the gallery order, pids 2,1,1.
    # Positives at ranks 2 and 3: AP = (1/2 + 2/3) / 2, INP = 2/3. G = 3 < 20: rank20 reads as rank3.
    out = rank_metrics(np.zeros((1, 3)), np.array([1]), np.array([2, 1, 1]), dedup_ranks=False)
    assert out["rank1"] == 0.0 and out["rank5"] == 100.0 and out["rank20"] == 100.0
    assert out["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert out["mINP"] == pytest.approx(100 * 2 / 3)
    assert set(out) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query has a true match"):
        rank_metrics(np.ones((2, 2)), np.array([5, 6]), np.array([1, 2]), dedup_ranks=True)


@pytest.mark.parametrize("dedup_ranks", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_matches_slow_reference(seed, dedup_ranks, monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 64)  # several chunks of queries
    rng = np.random.default_rng(seed)
    num_q, num_g = 23, 31
    sim = rng.standard_normal((num_q, num_g))  # continuous: no ties
    q_pids = rng.integers(0, 9, num_q)  # pid 8 never in the gallery below
    g_pids = rng.integers(0, 8, num_g)
    exclude = rng.random((num_q, num_g)) < 0.3
    ranks = (1, 3, 5, 10, 20)
    cmc, m_ap, m_inp = _slow_reference(sim, q_pids, g_pids, exclude, dedup_ranks, max_rank=20)
    out = rank_metrics(sim, q_pids, g_pids, exclude=exclude, dedup_ranks=dedup_ranks, ranks=ranks)
    for k in ranks:
        assert out[f"rank{k}"] == pytest.approx(100 * cmc[k - 1])
    assert out["mAP"] == pytest.approx(100 * m_ap)
    assert out["mINP"] == pytest.approx(100 * m_inp)


@pytest.mark.parametrize("dedup_ranks", [True, False])
def test_ties_match_slow_reference_on_long_lists(dedup_ranks):
    # Three similarity levels over 90 entries: an unstable sort (numpy's default) reorders ties.
    rng = np.random.default_rng(7)
    sim = rng.integers(0, 3, (6, 90)).astype(np.float64)
    q_pids, g_pids = rng.integers(0, 5, 6), rng.integers(0, 5, 90)
    cmc, m_ap, m_inp = _slow_reference(sim, q_pids, g_pids, None, dedup_ranks, max_rank=20)
    out = rank_metrics(sim, q_pids, g_pids, dedup_ranks=dedup_ranks, ranks=(1, 2, 3))
    assert [out["rank1"], out["rank2"], out["rank3"]] == pytest.approx(100 * cmc[:3])
    assert out["mAP"] == pytest.approx(100 * m_ap)
    assert out["mINP"] == pytest.approx(100 * m_inp)
