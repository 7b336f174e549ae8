"""The exact k-NN: faiss and torch give the same neighbours, any slicing of the queries gives the same
lists, the 2-rank service equals the single-process search, and the clustering runs without faiss."""

import os
import socket
import sys

import numpy as np
import pytest
import torch

from dmdl_dist.clustering.jaccard import jaccard_distance, knn_for_jaccard
from dmdl_dist.clustering.knn import FaissMissingError, faiss_available, knn, resolve_backend
from dmdl_dist.clustering.pseudo_labels import make_pseudo_labels
from dmdl_dist.errors import DmdlError

KNN = sys.modules["dmdl_dist.clustering.knn"]  # the module: dmdl_dist.clustering exports the function `knn`
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def blobs(per, centres, d=16, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.normal(size=(centres, d)), per, axis=0) + noise * rng.normal(size=(centres * per, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(centres), per)


def with_ties(n=400, d=16, seed=0):
    """Random unit rows with planted ties: a pair, a group larger than the search's first margin,
    and a near-duplicate."""
    x = unit(n, d, seed)
    x[[50, 300]] = x[7]  # row 7 ties with two later rows
    x[100:140] = x[3]  # 41 copies of row 3: its list is one tie past k
    x[200] = x[9] * np.float32(1 + 2**-20)  # a near-tie: 1e-6 apart, within the float32 search's error bound
    return x


def reference(x: np.ndarray, k: int) -> np.ndarray:
    """Every pair in float64, rounded once to float32; by similarity descending, ties by the lower index."""
    s = (x.astype(np.float64) @ x.astype(np.float64).T).astype(np.float32)
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), s.shape), -s), axis=1)
    return order[:, :k]


@needs_faiss
@pytest.mark.parametrize("k", [1, 5, 21, 400])
def test_faiss_and_torch_give_the_same_exact_neighbours(k):
    x = with_ties()
    fs, fi = knn(x, k, backend="faiss", device="cpu")
    ts, ti = knn(x, k, backend="torch", device="cpu")
    assert fi.shape == ti.shape == (400, k) and fi.dtype == ti.dtype == np.int64 and fs.dtype == np.float32
    assert np.array_equal(fi, ti) and np.array_equal(fs, ts)
    assert np.array_equal(ti, reference(x, k))
    assert np.allclose(ts, np.take_along_axis(x @ x.T, ti, axis=1), atol=1e-6)


def test_ties_order_by_the_lower_index_and_lists_widen_past_a_tied_group():
    x = with_ties()
    sims, idx = knn(x, 21, backend="torch", device="cpu")
    assert idx[7, :3].tolist() == [7, 50, 300] and idx[50, :3].tolist() == [7, 50, 300]
    assert idx[120].tolist() == [3, *range(100, 120)]  # 41 equal rows: the 21 lowest indices
    assert idx[9, 0] == 200 and idx[9, 1] == 9  # the longer copy scores higher, also against row 9 itself
    # The rule holds everywhere: similarity descending, ties by the lower index.
    step_down = sims[:, :-1] > sims[:, 1:]
    tie_up = (sims[:, :-1] == sims[:, 1:]) & (idx[:, :-1] < idx[:, 1:])
    assert (step_down | tie_up).all()


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_sliced_search_concatenated_equals_the_whole(backend):
    x = with_ties(seed=1)
    whole = knn(x, 13, backend=backend, device="cpu")
    cuts = [0, 1, 7, 120, 121, 333, 400]
    parts = [knn(x, 13, backend=backend, device="cpu", queries=(a, b)) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert np.array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    assert np.array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    assert knn(x, 13, backend=backend, queries=slice(5, 9))[1].tolist() == whole[1][5:9].tolist()
    assert knn(x, 13, backend=backend, queries=(4, 4))[1].shape == (0, 13)


def test_small_torch_blocks_and_tensors_give_the_same_lists():
    x = with_ties(seed=2)
    want = knn(x, 9, backend="torch", device="cpu")
    got = knn(torch.from_numpy(x), 9, backend="torch", block_bytes=4 * 400 * 3)  # three query rows per block
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])


def test_the_gpu_rerank_sums_as_the_cpu_one_in_any_block():
    # The device path of the float64 re-rank, run on the CPU: same values, bit for bit in any block size.
    x = torch.from_numpy(unit(50, 24, seed=3))
    rows = torch.arange(50)
    cand = torch.randint(0, 50, (50, 7), generator=torch.Generator().manual_seed(0))
    cpu = KNN._exact_dots_numpy(x, rows, cand)
    blocks = [KNN._exact_dots_torch(x, rows, cand, block_bytes=b) for b in (16 * 7 * 24 * 3, 1 << 20)]
    assert torch.allclose(blocks[0], cpu, rtol=0, atol=1e-15) and torch.equal(blocks[0], blocks[1])


def test_bad_arguments_are_named():
    x = unit(10, 4, seed=0)
    with pytest.raises(ValueError, match="backend"):
        knn(x, 3, backend="annoy")
    with pytest.raises(ValueError, match="within"):
        knn(x, 3, queries=(5, 11))
    with pytest.raises(ValueError, match="k must"):
        knn(x, 0)


@pytest.fixture
def no_faiss(monkeypatch):
    """faiss made unimportable, as on a plain `pip install dmdl-dist`."""
    monkeypatch.setitem(sys.modules, "faiss", None)


def test_without_faiss_auto_clusters_through_torch(no_faiss):
    assert not faiss_available() and resolve_backend("auto") == "torch"
    with pytest.raises(FaissMissingError, match=r"dmdl-dist\[cpu\]") as err:
        knn(unit(10, 4, seed=0), 3, backend="faiss")
    assert isinstance(err.value, DmdlError)
    x, truth = blobs(12, 4)
    result = make_pseudo_labels([x, x[::-1].copy()], stage=2, epoch_in_stage=0, k1=10, k1_source=10, k2=4,
                                eps=0.6, min_samples=4, knn_backend="auto")
    assert result.num_clusters == [4, 4] and result.num_shared == 4
    assert all(len(set(result.labels[0][truth == c])) == 1 for c in range(4))


def test_without_faiss_gallery_search_names_the_install(no_faiss):
    from dmdl_dist.serve.gallery_index import build_index

    with pytest.raises(FaissMissingError, match="faiss-cpu"):
        build_index(unit(5, 4, seed=0))


def test_given_neighbours_skip_the_search_and_keep_the_labels(monkeypatch):
    import dmdl_dist.clustering.jaccard as jaccard_module

    x, _ = blobs(10, 5)
    nb = knn_for_jaccard(x, 8, backend="torch")
    kw = dict(stage=1, epoch_in_stage=0, k1=8, k1_source=8, k2=3, eps=0.6, min_samples=3)
    want = make_pseudo_labels([x, x], **kw, knn_backend="torch")
    monkeypatch.setattr(jaccard_module, "knn", None)  # any search now would fail
    got = make_pseudo_labels([x, x], **kw, neighbours=[nb, nb])
    assert all(np.array_equal(a, b) for a, b in zip(got.labels, want.labels, strict=True))
    assert "knn_visible" in want.timings and "knn_visible" not in got.timings
    with pytest.raises(ValueError, match="neighbours must be"):
        jaccard_distance(x, k1=5, neighbours=nb)


# The 2-rank service (gloo), against the single-process search.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_features() -> list[np.ndarray]:
    vis, _ = blobs(15, 6, d=24, noise=0.3, seed=4)
    ir, _ = blobs(11, 5, d=24, noise=0.3, seed=5)
    vis[[20, 70]] = vis[3]  # a tie that crosses the two ranks' shards
    return [vis, ir[:-1]]  # odd N: the shards differ by a row


def _service_worker(rank: int, world: int, port: int, backend: str, out: str) -> None:
    import torch.distributed as dist

    from dmdl_dist.distributed.knn import cluster_neighbours

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        feats = service_features()
        found, timings = cluster_neighbours([torch.from_numpy(f) for f in feats], 8, backend=backend)
        labels = make_pseudo_labels(feats, stage=2, epoch_in_stage=1, k1=8, k1_source=8, k2=3, eps=0.6,
                                    min_samples=3, neighbours=found)
        np.savez(os.path.join(out, f"rank{rank}.npz"), vs=found[0][0], vi=found[0][1], is_=found[1][0],
                 ii=found[1][1], lv=labels.labels[0], li=labels.labels[1], u=np.concatenate(labels.shared),
                 keys=np.array(sorted(timings)))
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_two_rank_service_equals_the_single_process_search(tmp_path, backend):
    import torch.multiprocessing as mp

    feats = service_features()
    single = [knn_for_jaccard(f, 8, backend=backend) for f in feats]
    labels = make_pseudo_labels(feats, stage=2, epoch_in_stage=1, k1=8, k1_source=8, k2=3, eps=0.6,
                                min_samples=3, knn_backend=backend)
    mp.spawn(_service_worker, args=(2, _free_port(), backend, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert np.array_equal(got["vi"], single[0][1]) and np.array_equal(got["ii"], single[1][1])
        assert np.array_equal(got["vs"], single[0][0]) and np.array_equal(got["is_"], single[1][0])
        assert np.array_equal(got["lv"], labels.labels[0]) and np.array_equal(got["li"], labels.labels[1])
        assert np.array_equal(got["u"], np.concatenate(labels.shared))
    assert labels.num_clusters[0] >= 2  # real clusters, not an agreement on all-outliers
    keys = set(np.load(tmp_path / "rank0.npz")["keys"].tolist())
    assert {"knn_visible", "knn_gather_visible", "knn_rank0_visible", "knn_rank1_infrared"} <= keys


def test_single_process_service_is_the_plain_search():
    from dmdl_dist.distributed.knn import sharded_knn

    x = with_ties(seed=6)
    (sims, idx), timings = sharded_knn(x, 7, backend="torch")
    assert np.array_equal(idx, knn(x, 7, backend="torch")[1])
    assert set(timings) == {"knn", "knn_gather", "knn_rank0"}
