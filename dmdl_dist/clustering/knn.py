"""Exact inner-product k-NN with two backends that return the same neighbours: faiss and torch.

faiss searches on its GPU index where faiss has one, on the CPU (BLAS) otherwise; torch runs a
blocked matmul + top-k on the features' device, so a CUDA worker searches on its GPU without
faiss. Both only propose candidates: the float32 search of each backend rounds differently (and
differently again for another block of queries), so near-ties would order differently. Every
candidate's similarity is therefore recomputed in float64 (the products of float32 values are
exact there) and rounded once to float32, the lists are ordered by that similarity, descending,
ties by the lower index, and a row is widened and searched again until the float32 search's
error bound proves that no row outside its candidates can enter its k best. The neighbours are
then the same for either backend, any device and any slicing of the queries.
"""

from __future__ import annotations

import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from dmdl_dist.errors import DmdlError

BACKENDS = ("auto", "faiss", "torch")
# Scratch memory of one block of the torch search (B x N scores), and of the float64 re-rank on a GPU;
# on the CPU the re-rank takes blocks that stay in cache: it mostly gathers rows.
BLOCK_BYTES = 256 << 20
_CPU_RERANK_BYTES = 1 << 20
_U32 = 2.0**-24  # unit roundoff of float32

Neighbours = tuple[np.ndarray, np.ndarray]  # (sims N x k float32, idx N x k int64), best first


class FaissMissingError(DmdlError, ImportError):
    """faiss was asked for and is not installed."""


def faiss_module():
    """The faiss module, imported on first use; a missing install names the extra that brings it."""
    try:
        import faiss
    except ImportError as err:
        raise FaissMissingError(
            "faiss is not installed: pip install 'dmdl-dist[cpu]' (faiss-cpu) or 'dmdl-dist[gpu]' (faiss-gpu); "
            "the clustering runs without it (cluster.knn_backend=auto or torch), gallery search does not"
        ) from err
    return faiss


def faiss_available() -> bool:
    try:
        faiss_module()
    except FaissMissingError:
        return False
    return True


def gpu_available() -> bool:
    """Whether faiss has a GPU here (a faiss-gpu build and a visible device)."""
    if not faiss_available():
        return False
    faiss = faiss_module()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_backend(backend: str) -> str:
    """auto -> faiss when it is importable, else torch; faiss without faiss installed is an error naming the fix."""
    if backend not in BACKENDS:
        raise ValueError(f"k-NN backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss":
        faiss_module()
    return backend


def knn(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    queries: tuple[int, int] | slice | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Neighbours:
    """The k most similar rows of each query row (itself included), by exact inner product.

    features: N x D float32 (numpy, or a tensor searched where it is) -> (sims Q x k float32,
    idx Q x k int64) as numpy, best first, ties by the lower index; k is clipped to N.
    queries: rows [start, end) searched against all N rows (a worker's share); None: all rows.
    device: faiss: None takes the GPU when faiss has one, "cpu" the CPU, "cuda[:i]" insists on
    the GPU. torch: None is where a tensor already is, else CUDA when torch has it, else the CPU.
    """
    x = _matrix(features)
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = int(min(k, n))
    start, end = _bounds(queries, n)
    name = resolve_backend(backend)
    if name == "faiss":
        search, here = _faiss_search(x, device)
    else:
        search, here = _torch_search(x, _torch_device(features, device), block_bytes)
    ref = x.to(here)  # where the exact re-rank runs: the search's device
    slack = _slack(ref)
    sims = torch.empty(end - start, k, dtype=torch.float32)
    idx = torch.empty(end - start, k, dtype=torch.int64)
    todo = torch.arange(end - start)
    width = min(n, k + max(8, k // 8))  # a margin: nearly every row is proved complete at the first try
    with torch.no_grad():
        while todo.numel():
            rows = todo + start
            approx, cand = search(rows, width)  # B x W each, on `here`
            s, i, sure = _rerank(ref, rows.to(here), cand, approx, k, slack, width == n, block_bytes)
            sure = sure.cpu()
            sims[todo[sure]], idx[todo[sure]] = s[sure].cpu(), i[sure].cpu()
            todo = todo[~sure]
            width = min(n, 2 * width)
    return sims.numpy(), idx.numpy()


def _matrix(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """N x D float32 tensor on the features' device (numpy: a CPU view, no copy)."""
    if isinstance(features, torch.Tensor):
        x = features.detach().to(torch.float32).contiguous()
    else:
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"features must be N x D, got shape {tuple(x.shape)}")
    return x


def _bounds(queries: tuple[int, int] | slice | None, n: int) -> tuple[int, int]:
    if queries is None:
        return 0, n
    if isinstance(queries, slice):
        if queries.step not in (None, 1):
            raise ValueError(f"queries must be a contiguous slice, got step {queries.step}")
        queries = (0 if queries.start is None else queries.start, n if queries.stop is None else queries.stop)
    start, end = (int(q) for q in queries)
    if not 0 <= start <= end <= n:
        raise ValueError(f"queries [{start}, {end}) must lie within the {n} rows")
    return start, end


def _slack(x: torch.Tensor) -> torch.Tensor:
    """Per row: a bound on |float32 search value - exact value|, plus a float32 ulp of the result.

    The dot product of D terms in float32 errs by at most gamma_D = D u / (1 - D u) times
    sum |x_i y_i| <= |x| |y|, whatever the order of the sum (BLAS blocking, GPU reductions). Both
    backends search in IEEE float32: faiss's GPU code disallows reduced precision, and the torch
    search turns TF32 off.
    """
    n, d = x.shape
    gamma = d * _U32 / max(1.0 - d * _U32, 1e-12) + 4 * _U32
    norms = torch.linalg.vector_norm(x, dim=1).double() * (1 + 1e-6)  # N; over any float32 rounding of the norm
    return gamma * norms * (norms.max() if n else 0.0)


@contextlib.contextmanager
def _exact_float32(device: torch.device):
    """IEEE float32 matmuls (no TF32, no autocast) while the search runs."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(before)


def _torch_device(features: np.ndarray | torch.Tensor, device: str | torch.device | None) -> torch.device:
    """The torch search's device: as asked, else where a tensor is, else CUDA when torch has it."""
    if device is not None:
        return torch.device(device)
    if isinstance(features, torch.Tensor):
        return features.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torch_search(x: torch.Tensor, here: torch.device, block_bytes: int):
    base = x.to(here)  # N x D
    n = base.shape[0]

    def search(rows: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = rows.to(here)
        step = max(1, block_bytes // (4 * max(n, 1)))
        vals, cand = [], []
        with _exact_float32(here):
            for b in range(0, rows.numel(), step):
                scores = base[rows[b : b + step]] @ base.T  # B x N
                v, i = scores.topk(width, dim=1)  # B x W, any order among ties: the re-rank decides
                vals.append(v)
                cand.append(i)
        return torch.cat(vals), torch.cat(cand)

    return search, here


@functools.lru_cache(maxsize=1)
def _gpu_resources():
    """faiss's GPU scratch memory, reserved on first use and reused (each search names its device)."""
    return faiss_module().StandardGpuResources()


def _faiss_search(x: torch.Tensor, device):
    faiss = faiss_module()
    want = torch.device(device) if device is not None else None
    if want is None:  # the GPU when faiss has one: the current CUDA device, else faiss's first
        gpu = (torch.cuda.current_device() if torch.cuda.is_available() else 0) if gpu_available() else None
    elif want.type == "cuda":
        if not gpu_available():
            raise DmdlError(f"the faiss k-NN was asked to run on {want} but faiss has no GPU here: install "
                            f"faiss-gpu (pip install 'dmdl-dist[gpu]') or set cluster.knn_backend=torch")
        gpu = want.index if want.index is not None else 0
    else:
        gpu = None
    base = np.ascontiguousarray(x.cpu().numpy())  # N x D
    on_gpu = gpu is not None and torch.cuda.is_available()
    here = torch.device("cuda", gpu) if on_gpu else torch.device("cpu")

    def search(rows: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = rows.cpu().numpy()
        contiguous = len(r) > 0 and r[-1] - r[0] + 1 == len(r)
        q = base[r[0] : r[-1] + 1] if contiguous else base[r]  # B x D
        if gpu is not None and width <= 2048:  # faiss's GPU k-selection stops at 2048
            vals, cand = faiss.knn_gpu(_gpu_resources(), q, base, width, metric=faiss.METRIC_INNER_PRODUCT,
                                       device=gpu)
        else:
            vals, cand = faiss.knn(q, base, width, metric=faiss.METRIC_INNER_PRODUCT)
        return torch.from_numpy(vals).to(here), torch.from_numpy(cand.astype(np.int64, copy=False)).to(here)

    return search, here


def _exact_dots(x: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor, block_bytes: int) -> torch.Tensor:
    """<x_row, x_cand> in float64, B x W.

    The products of float32 values are exact in float64 and a sum of D of them errs by about
    D 1e-16, so every way of computing it rounds to the same float32 but for about one value in
    10^8, where the two results differ by one float32 ulp.
    """
    if x.device.type == "cpu":
        return _exact_dots_numpy(x, rows, cand)
    return _exact_dots_torch(x, rows, cand, block_bytes)


def _exact_dots_numpy(x: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """A float64 matrix-vector product per row, over blocks that stay in cache (gathering the
    candidates' rows is most of the cost), on torch's number of threads (numpy lets go of the GIL)."""
    b, w = cand.shape
    xn, rn, cn = x.numpy(), rows.numpy(), cand.numpy()
    out = np.empty((b, w), np.float64)
    step = max(1, _CPU_RERANK_BYTES // max(1, 8 * w * x.shape[1]))

    def block(s: int) -> None:
        cands = xn[cn[s : s + step]].astype(np.float64)  # b x W x D
        out[s : s + step] = np.matmul(cands, xn[rn[s : s + step]].astype(np.float64)[:, :, None])[:, :, 0]

    starts = range(0, b, step)
    threads = min(torch.get_num_threads(), len(starts))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(block, starts))
    else:
        for s in starts:
            block(s)
    return torch.from_numpy(out)


def _exact_dots_torch(x: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor, block_bytes: int) -> torch.Tensor:
    """On the device, in blocks of one shape (the last one padded), so that the reduction is laid out the same
    way in every call."""
    b, w = cand.shape
    step = max(1, block_bytes // max(1, 16 * w * x.shape[1]))  # not clipped to B: the same shape in every call
    out = torch.empty(b, w, dtype=torch.float64, device=x.device)
    for s in range(0, b, step):
        take = torch.arange(s, s + step, device=x.device).clamp_(max=b - 1)
        prod = x[cand[take]].double() * x[rows[take]].double().unsqueeze(1)  # step x W x D
        out[s : s + step] = prod.sum(dim=2)[: b - s]
    return out


def _rerank(
    x: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor, approx: torch.Tensor, k: int, slack: torch.Tensor,
    whole: bool, block_bytes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k among each row's candidates, and whether that is provably the top-k among all rows.

    x: N x D; rows: B query rows; cand, approx: B x W candidates and their float32 search values.
    Returns sims B x k float32, idx B x k int64, sure B bool.
    """
    b = cand.shape[0]
    exact = _exact_dots(x, rows, cand, block_bytes)  # B x W float64
    ordered, perm = cand.sort(dim=1)  # by index first, so that the stable sort breaks ties by index
    sims, order = exact.float().gather(1, perm).sort(dim=1, descending=True, stable=True)
    idx = ordered.gather(1, order)
    if whole:
        sure = torch.ones(b, dtype=torch.bool, device=x.device)
    else:
        # Any row outside the candidates has a search value <= the smallest candidate's, so an exact
        # value <= that + slack: strictly below the k-th best's, it cannot enter the list.
        floor = approx.double().min(dim=1).values + slack.to(x.device)[rows]  # B
        sure = sims[:, k - 1].double() > floor
    return sims[:, :k], idx[:, :k], sure
