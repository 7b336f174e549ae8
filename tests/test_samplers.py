import numpy as np
import pytest

from dmdl_dist.data.samplers import balanced_batches, joint_batches

P, K = 4, 6


def _modality(seed=0, n_ids=12, cams=3, outlier_share=0.15):
    """Labels and cameras: ids of 1..30 images over 1..cams cameras, some outliers, shuffled order."""
    rng = np.random.default_rng(seed)
    labels, camids = [], []
    for pid in range(n_ids):
        n = [1, 3, 30][pid % 3] if pid < 6 else int(rng.integers(2, 30))
        labels += [pid] * n
        camids += list(rng.integers(0, 1 if pid == 4 else cams, n))  # id 4 has a single camera
    labels, camids = np.array(labels), np.array(camids)
    labels[rng.random(labels.size) < outlier_share] = -1
    perm = rng.permutation(labels.size)
    return labels[perm], camids[perm]


def _global(batches):
    return [b.index.reshape(P, K) for b in batches]


def test_camera_aware_anchor_then_other_cameras():
    labels, camids = _modality()
    for rows in _global(balanced_batches(labels, camids, P, K, 40, seed=3)):
        for row in rows:
            lab, cam = labels[row], camids[row]
            assert (lab == lab[0]).all() and lab[0] >= 0
            members = np.flatnonzero(labels == lab[0])
            if (camids[members] != cam[0]).any():
                assert (cam[1:] != cam[0]).all()  # K - 1 from the other cameras
            elif members.size > 1:
                assert (row[1:] != row[0]).all()  # one camera: the identity's other images
            else:
                assert (row == row[0]).all()  # a single image, repeated
            pool = np.flatnonzero((labels == lab[0]) & (camids != cam[0]))
            if pool.size >= K:
                assert np.unique(row[1:]).size == K - 1  # enough images: no repeats


def test_without_camera_awareness_k_images_of_the_identity():
    labels, _ = _modality()
    for rows in _global(balanced_batches(labels, None, P, K, 40, seed=5, camera_aware=False)):
        for row in rows:
            assert (labels[row] == labels[row[0]]).all()
            if (labels == labels[row[0]]).sum() > K:
                assert np.unique(row).size == K


def test_outliers_never_drawn_and_labels_walk_a_permutation():
    labels, camids = _modality(seed=1)
    n_labels = np.unique(labels[labels >= 0]).size
    steps = _global(balanced_batches(labels, camids, P, K, 3 * (n_labels // P), seed=0))
    firsts = np.array([labels[rows[:, 0]] for rows in steps])  # steps x P
    assert (firsts >= 0).all()
    per_pass = n_labels // P
    for start in range(0, len(steps), per_pass):
        walked = firsts[start : start + per_pass].reshape(-1)
        assert np.unique(walked).size == walked.size  # a pass never repeats a label


def test_fewer_labels_than_pids_uses_every_label():
    labels = np.repeat([0, 1, 2], 8)
    for b in balanced_batches(labels, np.zeros_like(labels), 5, 2, 4, seed=2):
        assert set(labels[b.index]) == {0, 1, 2} and len(b) == 10


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_split_the_world1_batch(world):
    labels, camids = _modality(seed=2)
    whole = balanced_batches(labels, camids, P, K, 7, seed=11)
    parts = [balanced_batches(labels, camids, P, K, 7, seed=11, rank=r, world=world) for r in range(world)]
    for step, full in enumerate(whole):
        assert np.array_equal(full.position, np.arange(P * K))
        assert np.array_equal(np.concatenate([p[step].index for p in parts]), full.index)
        assert np.array_equal(np.concatenate([p[step].position for p in parts]), full.position)


def test_joint_ranks_split_the_world1_batch():
    (lv, cv), (li, ci) = _modality(seed=3), _modality(seed=4)
    whole = joint_batches(lv, cv, li, ci, P, K, 5, seed=1)
    parts = [joint_batches(lv, cv, li, ci, P, K, 5, seed=1, rank=r, world=4) for r in range(4)]
    for step, pair in enumerate(whole):
        for m in range(2):
            assert np.array_equal(np.concatenate([p[step][m].index for p in parts]), pair[m].index)
            assert np.array_equal(np.concatenate([p[step][m].position for p in parts]), pair[m].position)


def test_world_that_does_not_divide_the_batch_is_refused():
    labels, camids = _modality()
    with pytest.raises(ValueError, match=r"5 workers .* 4 x 6 = 24 .*\[1, 2, 3, 4, 6, 8, 12, 24\]"):
        balanced_batches(labels, camids, P, K, 1, seed=0, rank=0, world=5)
    with pytest.raises(ValueError, match="5 workers"):
        joint_batches(labels, camids, labels, camids, P, K, 1, seed=0, world=5)


def test_all_outliers_is_an_error():
    with pytest.raises(ValueError, match="outlier"):
        balanced_batches(np.full(5, -1), np.zeros(5), 2, 2, 1, seed=0)


def test_determinism_per_seed():
    labels, camids = _modality()
    a = balanced_batches(labels, camids, P, K, 5, seed=(7, 1))
    b = balanced_batches(labels, camids, P, K, 5, seed=(7, 1))
    c = balanced_batches(labels, camids, P, K, 5, seed=(7, 2))
    assert all(np.array_equal(x.index, y.index) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.index, y.index) for x, y in zip(a, c, strict=True))
    j1 = joint_batches(labels, camids, labels, camids, P, K, 5, seed=4)
    j2 = joint_batches(labels, camids, labels, camids, P, K, 5, seed=4)
    assert all(np.array_equal(x[m].index, y[m].index) for x, y in zip(j1, j2, strict=True) for m in range(2))


def test_joint_draws_shared_labels_in_both_modalities():
    lv, cv = _modality(seed=5, n_ids=10)
    li, ci = _modality(seed=6, n_ids=14)  # ids 10..13 exist only in infrared
    present_v = set(lv[lv >= 0])
    steps = joint_batches(lv, cv, li, ci, P, K, 9, seed=0)
    n_union = len(present_v | set(li[li >= 0]))
    assert len(steps) == 9
    for vis, ir in steps:
        rows_v, rows_i = lv[vis.index].reshape(P, K), li[ir.index].reshape(P, K)
        assert (rows_v == rows_v[:, :1]).all() and (rows_i == rows_i[:, :1]).all()
        assert (rows_v >= 0).all() and (rows_i >= 0).all()
        for a, b in zip(rows_v[:, 0], rows_i[:, 0], strict=True):
            assert a == b or b not in present_v  # an infrared-only label takes a random visible one
        for rows, cams in ((vis.index.reshape(P, K), cv), (ir.index.reshape(P, K), ci)):
            for row in rows:
                others = cams[row[1:]] != cams[row[0]]
                assert others.all() or not others.any()
    # One pass of the union, drawn once and cycled (as the release's inter-modality loader does).
    per_pass = n_union // P
    assert np.array_equal(steps[per_pass][0].index, steps[0][0].index)


def test_replacement_thresholds_of_the_two_samplers():
    # One identity whose K images all sit on different cameras: every anchor's pool holds K - 1.
    labels, camids = np.zeros(K, dtype=int), np.arange(K)
    joint = joint_batches(labels, camids, labels, camids, 1, K, 1, seed=0)[0]
    for b in joint:  # the joint sampler draws K - 1 from K - 1 without replacement
        assert sorted(b.index) == list(range(K))
    single = balanced_batches(labels, camids, 1, K, 50, seed=0)  # the single one needs K: with replacement
    assert any(np.unique(b.index).size < K for b in single)
