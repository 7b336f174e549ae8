"""The sparse Jaccard distance against a dense transcription of the field's algorithm.

`dense_reference` follows faiss_rerank.compute_jaccard_distance (cluster-contrast, as DMDL runs
it) step by step, with dense N x N arrays and Python loops, on the same neighbour lists.
"""

import numpy as np
import pytest

from dmdl_dist.clustering import jaccard_distance
from dmdl_dist.clustering.knn import gpu_available, knn
from dmdl_dist.errors import DmdlError


def dense_reference(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    n = len(x)
    _, full = knn(x, n, device="cpu")  # one full ranking, so ties order as in the code under test
    rank = full[:, :k1]  # the field searches k1 neighbours, itself included

    def recip(i, k):
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    V = np.zeros((n, n), np.float32)
    for i in range(n):
        r = recip(i, k1)
        expanded = r
        for c in r:
            rc = recip(c, int(np.around(k1 / 2)))
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expanded = np.append(expanded, rc)
        expanded = np.unique(expanded)
        w = np.exp(-(2 - 2 * x[i] @ x[expanded].T))
        V[i, expanded] = w / w.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])
    inv = [np.where(V[:, j] != 0)[0] for j in range(n)]
    D = np.zeros((n, n), np.float32)
    for i in range(n):
        s = np.zeros(n, np.float32)
        for j in np.where(V[i] != 0)[0]:
            s[inv[j]] += np.minimum(V[i, j], V[inv[j], j])
        D[i] = 1 - s / (2 - s)
    return np.maximum(D, 0)


def clustered(n, d, centres, seed, noise=0.5):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    x = c[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def filled(dist) -> np.ndarray:
    out = np.ones(dist.shape)
    coo = dist.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


@pytest.mark.parametrize(
    "n, d, centres, k1, k2",
    [(60, 16, 6, 8, 3), (150, 32, 10, 12, 4), (120, 8, 4, 20, 1), (90, 16, 6, 5, 6), (300, 64, 15, 30, 6)],
)
def test_matches_dense_reference(n, d, centres, k1, k2):
    x = clustered(n, d, centres, seed=n + k1)
    got = jaccard_distance(x, k1=k1, k2=k2, device="cpu")
    want = dense_reference(x, k1, k2)
    assert got.shape == (n, n) and got.dtype == np.float32
    assert np.abs(filled(got) - want).max() < 1e-5
    # Stored pairs are exactly the pairs below 1 (the diagonal, at 0, among them).
    coo = got.tocoo()
    assert set(zip(*np.nonzero(want < 1), strict=True)) == set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))
    assert np.allclose(got.diagonal(), 0, atol=1e-6)


def test_small_blocks_give_the_same_distances(monkeypatch):
    import dmdl_dist.clustering.jaccard as jaccard

    x = clustered(150, 32, 10, seed=162)
    whole = jaccard_distance(x, k1=12, k2=4, device="cpu")
    monkeypatch.setattr(jaccard, "_PAIR_BLOCK", 100)  # one or two rows per block
    pieces = jaccard_distance(x, k1=12, k2=4, device="cpu")
    assert abs(whole - pieces).max() < 1e-7 and whole.nnz == pieces.nnz
    assert np.abs(filled(pieces) - dense_reference(x, 12, 4)).max() < 1e-5


def test_symmetric():
    got = jaccard_distance(clustered(200, 16, 10, seed=5), k1=10, k2=4, device="cpu")
    assert abs(got - got.T).max() < 1e-6


def test_small_n_uses_every_point():
    # N < k1: the lists hold all N points, as the field's code would without faiss's -1 padding.
    x = clustered(7, 4, 2, seed=1)
    got = jaccard_distance(x, k1=30, k2=6, device="cpu")
    assert got.shape == (7, 7)
    assert np.abs(filled(got) - dense_reference(x, 7, 6)).max() < 1e-5
    assert jaccard_distance(x[:1], device="cpu").toarray().tolist() == [[0.0]]
    assert jaccard_distance(x[:0], device="cpu").shape == (0, 0)


def test_storage_grows_linearly():
    x = clustered(2000, 32, 100, seed=3)
    got = jaccard_distance(x, k1=20, k2=6, device="cpu")
    assert got.nnz < 2000 * 400  # O(N k), nowhere near N^2 = 4M


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="N x D"):
        jaccard_distance(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="k1"):
        jaccard_distance(clustered(10, 4, 2, seed=0), k1=0)


def test_gpu_request_without_gpu_is_a_clear_error():
    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DmdlError, match="faiss-gpu"):
        knn(clustered(10, 4, 2, seed=0), 3, backend="faiss", device="cuda")


def test_knn_includes_itself_first():
    x = clustered(50, 8, 5, seed=2)
    sims, idx = knn(x, 5, device="cpu")
    assert sims.shape == idx.shape == (50, 5) and idx.dtype == np.int64 and sims.dtype == np.float32
    assert (idx[:, 0] == np.arange(50)).all()
    assert np.allclose(sims, np.take_along_axis(x @ x.T, idx, axis=1), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()
