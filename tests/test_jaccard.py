"""The sparse Jaccard distance against a direct dense transcription of METHOD.md's steps."""

import numpy as np
import pytest

from dmdl_dist.clustering import jaccard_distance
from dmdl_dist.clustering.knn import knn


def dense_reference(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Zhong et al.'s algorithm with dense N x N arrays and Python loops, as the field runs it."""
    n = len(x)
    _, rank = knn(x, n, use_gpu=False)  # the same neighbour order (ties) as the code under test

    def recip(i, k):
        fwd = rank[i, : k + 1]
        back = rank[fwd, : k + 1]
        return fwd[np.where(back == i)[0]]

    V = np.zeros((n, n))
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
    if k2 > 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])
    inv = [np.where(V[:, j] != 0)[0] for j in range(n)]
    D = np.zeros((n, n))
    for i in range(n):
        s = np.zeros(n)
        for j in np.where(V[i] != 0)[0]:
            s[inv[j]] += np.minimum(V[i, j], V[inv[j], j])
        D[i] = 1 - s / (2 - s)
    return D


def clustered(n, d, centres, seed, noise=0.5):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    x = c[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    "n, d, centres, k1, k2", [(60, 16, 6, 8, 3), (150, 32, 10, 12, 4), (300, 64, 15, 30, 6), (80, 8, 4, 20, 1)]
)
def test_matches_dense_reference(n, d, centres, k1, k2):
    x = clustered(n, d, centres, seed=n + k1)
    got = jaccard_distance(x, k1=k1, k2=k2, use_gpu=False)
    want = dense_reference(x, k1, k2)
    dense = np.ones((n, n))
    coo = got.tocoo()
    dense[coo.row, coo.col] = coo.data
    assert np.abs(dense - want).max() < 1e-5
    # Every pair below 1 is stored, and every stored pair is below 1.
    below = set(zip(*np.nonzero(want < 1 - 1e-12), strict=True))
    assert below == set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))
    assert np.allclose(got.diagonal(), 0)


def test_small_n_clips_k():
    x = clustered(5, 4, 2, seed=1)
    got = jaccard_distance(x, k1=30, k2=6, use_gpu=False)
    assert got.shape == (5, 5) and np.allclose(got.diagonal(), 0)
    dense = np.ones((5, 5))
    coo = got.tocoo()
    dense[coo.row, coo.col] = coo.data
    assert np.abs(dense - dense_reference(x, 4, 5)).max() < 1e-5


def test_sparse_memory_stays_linear():
    x = clustered(2000, 32, 100, seed=3)
    got = jaccard_distance(x, k1=20, k2=6, use_gpu=False)
    assert got.nnz < 2000 * 400  # O(N k), nowhere near N^2 = 4M


def test_gpu_request_without_gpu_is_a_clear_error():
    from dmdl_dist.clustering.knn import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        knn(clustered(10, 4, 2, seed=0), 3, use_gpu=True)
