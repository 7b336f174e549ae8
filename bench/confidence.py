"""Time of the release's label confidence (one scikit-learn GaussianMixture per cluster) and of the samplers.

    python bench/confidence.py [--clusters 500] [--repeat 40]

Prints ms per fit at cluster sizes 5..60 (with scikit-learn's OpenMP pool at its default and held to
one thread, as gmm_confidence does), the whole label_confidence for a SYSU-MM01-sized modality
(500 clusters of 5..60 images, 2048-d features) and the time to draw an epoch of 200 P x K batches.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from dmdl_dist.clustering.refine import gmm_confidence, label_confidence
from dmdl_dist.data.samplers import balanced_batches, joint_batches


def ms_per_fit(size: int, repeat: int, threads: int | None) -> float:
    rng = np.random.default_rng(size)
    xs = [rng.random((size, 1)).astype(np.float32) for _ in range(repeat)]
    start = time.perf_counter()
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in xs:
            GaussianMixture(n_components=2, random_state=0).fit(x).predict_proba(x)
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    print("size  ms/fit (default pool)  ms/fit (one thread)")
    for size in (5, 10, 20, 40, 60):
        print(f"{size:4d}  {ms_per_fit(size, args.repeat, None):21.1f}  {ms_per_fit(size, args.repeat, 1):19.1f}")

    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 61, args.clusters)
    labels = np.repeat(np.arange(args.clusters), sizes)
    labels[rng.random(labels.size) < 0.05] = -1
    centres = rng.standard_normal((args.clusters, 2048), dtype=np.float32)
    feats = centres[np.maximum(labels, 0)] + rng.standard_normal((labels.size, 2048), dtype=np.float32)
    valid = labels >= 0
    cents = np.stack([feats[labels == k].mean(0) for k in range(args.clusters)])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    start = time.perf_counter()
    label_confidence(feats, labels, cents)
    print(f"label_confidence: {args.clusters} clusters, {valid.sum()} labelled of {labels.size} samples: "
          f"{time.perf_counter() - start:.2f} s (2048-d scoring on the CPU included)")
    scores = rng.random(valid.sum()).astype(np.float32)
    start = time.perf_counter()
    gmm_confidence(scores, labels[valid])
    print(f"gmm_confidence alone, {args.clusters} clusters: {time.perf_counter() - start:.2f} s")

    camids = rng.integers(0, 4, labels.size)
    start = time.perf_counter()
    balanced_batches(labels, camids, 8, 16, 200, seed=0, rank=1, world=4)
    mid = time.perf_counter()
    joint_batches(labels, camids, labels, camids, 8, 16, 200, seed=0, rank=1, world=4)
    print(f"200 batches of 8 x 16: balanced {(mid - start) * 1e3:.0f} ms, joint "
          f"{(time.perf_counter() - mid) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
