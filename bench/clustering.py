"""Jaccard + DBSCAN pseudo-labelling time and peak memory against the exact k-NN search alone.

    python bench/clustering.py [--sizes 5000 20000 34000] [--dim 2048] [--k1 30] [--k2 6] [--eps 0.6]
                               [--backend auto|faiss|torch]

Each measurement runs in a fresh subprocess, so its peak resident memory is its own: VmHWM of
/proc/self/status (the same figure as getrusage's ru_maxrss), which counts the interpreter and
its libraries, the features (N x D float32, generated in slices so that no float64 copy
inflates the peak) and all the work; "base MB" is that figure once the features exist, before
any search. "knn s" is what the field's code searches: k1 neighbours, exact inner product, on
faiss's CPU threads (torch's when faiss is not installed). "total s" is jaccard_distance (its
own, longer, exact k-NN search included: clustering.knn, --backend) plus dbscan_labels.
Targets at N = 34k: peak at most 1500 MB, total at most 1.3 x knn. The field's dense
implementation: 14.6 GB and 109 s at N = 34k on 2 cores, k-NN alone 26 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def features(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """ReID-like unit features: ~20 images per identity, within-identity cosine about 0.6, across about 0."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 20, 1), dim), dtype=np.float32)
    ids = rng.integers(0, len(centres), n)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 4096):
        part = centres[ids[start : start + 4096]]
        part = part + 0.8 * rng.standard_normal(part.shape, dtype=np.float32)
        x[start : start + 4096] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return x


def peak_mb() -> float:
    """High-water mark of this process's resident memory, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark measures memory on Linux only")


def child(kind: str, n: int, dim: int, k1: int, k2: int, eps: float, backend: str) -> dict:
    import dmdl_dist.clustering.jaccard as jaccard_module
    from dmdl_dist.clustering import dbscan_labels, jaccard_distance, knn
    from dmdl_dist.clustering.knn import faiss_available, faiss_module

    x = features(n, dim)
    out: dict = {"n": n, "base_mb": peak_mb(), "own_knn_s": 0.0}

    def timed_knn(*args, **kwargs):  # splits jaccard_distance's time into its search and the rest
        t = time.perf_counter()
        found = knn(*args, **kwargs)
        out["own_knn_s"] += time.perf_counter() - t
        return found

    t0 = time.perf_counter()
    if kind == "knn":
        if faiss_available():  # the field's search: faiss alone, no exact re-rank
            faiss = faiss_module()
            faiss.knn(x, x, k1, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            knn(x, k1, backend="torch")
        out["knn_s"] = time.perf_counter() - t0
    else:
        jaccard_module.knn = timed_knn
        dist = jaccard_distance(x, k1=k1, k2=k2, backend=backend)
        t1 = time.perf_counter()
        labels = dbscan_labels(dist, eps=eps, min_samples=4)
        t2 = time.perf_counter()
        out.update(
            jaccard_s=t1 - t0,
            dbscan_s=t2 - t1,
            nnz_per_row=dist.nnz / n,
            clusters=int(labels.max()) + 1,
            outliers=float((labels < 0).mean()),
        )
    out["peak_mb"] = peak_mb()
    return out


def measure(kind: str, args: argparse.Namespace, n: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--sizes",
        str(n),
        "--dim",
        str(args.dim),
        "--k1",
        str(args.k1),
        "--k2",
        str(args.k2),
        "--eps",
        str(args.eps),
        "--backend",
        args.backend,
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 34000])
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--k1", type=int, default=30)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--eps", type=float, default=0.6)
    p.add_argument("--backend", choices=("auto", "faiss", "torch"), default="auto",
                   help="k-NN backend of jaccard_distance's own search (clustering.knn)")
    p.add_argument("--child", choices=("knn", "full"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.sizes[0], args.dim, args.k1, args.k2, args.eps, args.backend)))
        return
    print(
        f"{'N':>7} {'knn s':>7} {'jaccard s':>9} {'(search)':>8} {'dbscan s':>8} {'total s':>7} {'total/knn':>9} "
        f"{'peak MB':>7} {'base MB':>7} {'knn MB':>6} {'nnz/row':>7} {'clusters':>8} {'outliers':>8}"
    )
    for n in args.sizes:
        a, b = measure("knn", args, n), measure("full", args, n)
        total = b["jaccard_s"] + b["dbscan_s"]
        print(
            f"{n:>7} {a['knn_s']:7.2f} {b['jaccard_s']:9.2f} {b['own_knn_s']:8.2f} {b['dbscan_s']:8.2f} "
            f"{total:7.2f} {total / a['knn_s']:9.2f} {b['peak_mb']:7.0f} {b['base_mb']:7.0f} {a['peak_mb']:6.0f} "
            f"{b['nnz_per_row']:7.0f} {b['clusters']:>8} {b['outliers']:8.2f}",
            flush=True,
        )
    print(
        "knn: the field's search alone (faiss, k1 neighbours); jaccard: jaccard_distance, (search) the part of it "
        f"spent in its own, longer, exact k-NN search ({args.backend} backend); total = jaccard + dbscan. "
        "Peak and base: VmHWM of the measuring process "
        "(interpreter, libraries and features included). Targets at N=34k: total/knn <= 1.3, peak <= 1500 MB."
    )


if __name__ == "__main__":
    main()
