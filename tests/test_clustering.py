import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from dmdl_dist.clustering import (
    associate_hungarian,
    associate_nearest,
    dbscan_labels,
    jaccard_distance,
)
from dmdl_dist.clustering.pseudo_labels import make_pseudo_labels, shared_space, true_identity_labels


def blobs(per, centres, d=16, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    x = np.repeat(c, per, axis=0) + noise * rng.normal(size=(centres * per, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(centres), per)


def test_dbscan_recovers_blobs_and_marks_outliers():
    x, truth = blobs(10, 5)
    far = np.eye(16, dtype=np.float32)[:1] * -1  # one point away from every blob
    x = np.vstack([x, far])
    labels = dbscan_labels(jaccard_distance(x, k1=10, k2=1, device="cpu"), eps=0.6, min_samples=4)
    assert labels.dtype == np.int64
    assert labels[-1] == -1
    assert sorted(set(labels[:-1])) == [0, 1, 2, 3, 4]
    for c in range(5):
        assert len(set(labels[:-1][truth == c])) == 1


def test_dbscan_ignores_absent_pairs_and_rejects_eps_one():
    # Two points at stored distance 0.2, a third with no stored pair (distance 1).
    d = sp.csr_matrix(([0.0, 0.2, 0.2, 0.0, 0.0], ([0, 0, 1, 1, 2], [0, 1, 0, 1, 2])), shape=(3, 3))
    assert dbscan_labels(d, eps=0.5, min_samples=2).tolist() == [0, 0, -1]
    assert dbscan_labels(d, eps=0.1, min_samples=2).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="eps"):
        dbscan_labels(d, eps=1.0)


def test_dbscan_counts_explicit_zeros_as_neighbours():
    # Points 0 and 1 coincide (stored distance 0): with min_samples 2 they form a cluster.
    d = sp.csr_matrix(([0.0, 0.0, 0.0, 0.0], ([0, 0, 1, 1], [0, 1, 0, 1])), shape=(3, 3))
    assert dbscan_labels(d, eps=0.3, min_samples=2).tolist() == [0, 0, -1]


def test_nearest_association_directions():
    vis = np.array([[1, 0], [0, 1], [0.8, 0.6]], np.float32)
    ir = np.array([[0, 1], [1, 0]], np.float32)
    v2i = associate_nearest(vis, ir, "v2i")
    assert v2i.vis_to_ir.tolist() == [1, 0, 1] and v2i.ir_to_vis.tolist() == [-1, -1]
    i2v = associate_nearest(vis, ir, "i2v")
    assert i2v.ir_to_vis.tolist() == [1, 0] and i2v.vis_to_ir.tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="direction"):
        associate_nearest(vis, ir, "both")


def test_nearest_association_uses_cosine_not_raw_inner_product():
    vis = np.array([[10.0, 0.0]])  # long vector: raw inner products would favour the long infrared one
    ir = np.array([[0.6, 0.8], [0.0, 5.0], [1.0, 0.1]])
    assert associate_nearest(vis, ir, "v2i").vis_to_ir.tolist() == [2]


def test_hungarian_is_one_to_one_and_optimal():
    rng = np.random.default_rng(0)
    vis, ir = rng.normal(size=(4, 8)), rng.normal(size=(3, 8))
    a = associate_hungarian(vis, ir)
    matched = np.flatnonzero(a.vis_to_ir >= 0)
    assert len(matched) == 3 and sorted(a.vis_to_ir[matched]) == [0, 1, 2]
    assert all(a.ir_to_vis[a.vis_to_ir[v]] == v for v in matched)
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    cost = np.exp(-unit(vis) @ unit(ir).T)
    best = min(sum(cost[p[c], c] for c in range(3)) for p in itertools.permutations(range(4), 3))
    assert np.isclose(sum(cost[v, a.vis_to_ir[v]] for v in matched), best)


def _two_modalities(seed=2):
    x, truth = blobs(8, 4, seed=seed)
    ir = x + 0.02 * np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    return x, ir / np.linalg.norm(ir, axis=1, keepdims=True), truth


@pytest.mark.parametrize("epoch, anchor", [(0, 1), (1, 0), (2, 1)])
def test_stage2_shared_labels_are_the_anchor_clusters_and_k1_alternates(epoch, anchor):
    x, ir, truth = _two_modalities()
    pl = make_pseudo_labels([x, ir], stage=2, epoch_in_stage=epoch, k1=6, k1_source=4, k2=3, eps=0.6,
                            min_samples=3)
    assert pl.anchor == anchor and pl.matching == "cluster"
    assert pl.k1 == [6, 4] if anchor == 0 else pl.k1 == [4, 6]  # the anchor modality gets k1
    assert pl.num_shared == pl.num_clusters[anchor] == 4  # the source may split blobs: they map to one label
    assert np.array_equal(pl.shared[anchor], pl.labels[anchor])  # the anchor's clusters are the shared labels
    for c in range(4):
        assert len({*pl.shared[0][truth == c], *pl.shared[1][truth == c]}) == 1
    assert pl.association_rate() == 1.0
    assert {"jaccard_visible", "dbscan_infrared", "association"} <= set(pl.timings)


def test_nearest_matching_lets_several_source_clusters_share_a_label():
    vis = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], np.float32)
    ir = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    shared, n, how = shared_space([np.array([0, 1, 2]), np.array([0, 1])], [3, 2], [vis, ir], anchor=1,
                                  association="nearest", sample_level=False)
    assert (n, how) == (2, "cluster") and shared[0].tolist() == [0, 0, 1] and shared[1].tolist() == [0, 1]
    shared, n, _ = shared_space([np.array([0, 1, 2]), np.array([0, 1])], [3, 2], [vis, ir], anchor=1,
                                association="hungarian", sample_level=False)
    assert n == 3 and shared[0].tolist() == [0, 2, 1]  # one-to-one: the second visible cluster keeps its own label


def test_sample_matching_takes_the_nearest_anchor_images_label_outliers_included():
    vis = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    ir = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], np.float32)
    shared, n, how = shared_space([np.array([-1, -1, 0]), np.array([0, -1, 1])], [1, 2], [vis, ir], anchor=1,
                                  association="nearest", sample_level=True)
    assert (n, how) == (2, "sample") and shared[0].tolist() == [0, -1, 1]


def test_regdb_matches_samples_on_stage2_epochs_with_epoch_mod_5_at_least_2():
    x, ir, _ = _two_modalities()
    kw = dict(stage=2, k1=6, k1_source=6, k2=3, eps=0.6, min_samples=3, sample_matching="regdb")
    assert [make_pseudo_labels([x, ir], epoch_in_stage=e, **kw).matching for e in range(6)] == \
        ["cluster", "cluster", "sample", "sample", "sample", "cluster"]


def test_true_identity_labels():
    pl = true_identity_labels([np.array([5, 5, 9]), np.array([9, 7])], stage=2, epoch_in_stage=0)
    assert pl.num_shared == 3 and pl.anchor == 1
    assert pl.shared[0][2] == pl.shared[1][0]
    assert pl.labels[1].tolist() == [1, 0]
    stage1 = true_identity_labels([np.array([5, 5, 9]), np.array([9, 7])], stage=1, epoch_in_stage=0)
    assert stage1.shared is None and stage1.num_clusters == [2, 2]
