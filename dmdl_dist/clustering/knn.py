"""Exact inner-product k-NN with faiss: a GPU brute-force search where a GPU is, the CPU otherwise."""

from __future__ import annotations

import numpy as np


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "faiss is not installed: pip install 'dmdl-dist[cpu]' (faiss-cpu) or 'dmdl-dist[gpu]' (faiss-gpu)"
        ) from err
    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def knn(features: np.ndarray, k: int, *, use_gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar rows of each row (itself included), by exact inner product.

    features: N x D float32 with unit rows -> (sims N x k float32, idx N x k int64), best first;
    k is clipped to N. use_gpu: None picks the GPU when faiss has one (faiss.knn_gpu, brute
    force, k at most 2048 there); True insists; False forces the CPU (faiss.knn, BLAS).
    """
    faiss = _faiss()
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be N x D, got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = int(min(k, x.shape[0]))
    if resolve_gpu(use_gpu):
        res = faiss.StandardGpuResources()
        sims, idx = faiss.knn_gpu(res, x, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        sims, idx = faiss.knn(x, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    return sims.astype(np.float32, copy=False), idx.astype(np.int64, copy=False)


def resolve_gpu(use_gpu: bool | None) -> bool:
    """None: the GPU when faiss has one; True insists (an error names the fix when there is none); False: CPU."""
    if use_gpu is None:
        return gpu_available()
    if use_gpu and not gpu_available():
        raise RuntimeError("use_gpu=True but faiss has no GPU here: install faiss-gpu (pip install 'dmdl-dist[gpu]')")
    return use_gpu
