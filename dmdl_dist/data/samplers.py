"""Identity-balanced batches: P pseudo-identities x K instances, split across workers without overlap."""

from __future__ import annotations

import numpy as np


def balanced_batches(
    labels: np.ndarray,
    num_pids: int,
    num_instances: int,
    num_batches: int,
    *,
    seed: int,
    rank: int = 0,
    world: int = 1,
) -> list[np.ndarray]:
    """Index batches of P x K over samples with labels >= 0.

    Each global batch draws P * world distinct labels (with replacement only when fewer clusters
    exist) and K instances of each (with replacement for small clusters); rank r takes the r-th
    block of P labels, so workers never share a label within a step. The same (seed, labels)
    gives every rank the same global draw, so nothing needs to be communicated.
    """
    labels = np.asarray(labels)
    valid = np.flatnonzero(labels >= 0)
    if valid.size == 0:
        raise ValueError("no pseudo-labelled samples to draw batches from (every sample is an outlier)")
    order = valid[np.argsort(labels[valid], kind="stable")]
    uniq, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    pick_rng = np.random.default_rng(seed)  # identical on every rank
    rng = np.random.default_rng([seed, rank])  # this rank's instance draws
    want = num_pids * world
    batches = []
    for _ in range(num_batches):
        picked = pick_rng.choice(uniq.size, size=want, replace=uniq.size < want)
        mine = picked[rank * num_pids : (rank + 1) * num_pids]
        # K offsets per picked cluster: a permutation prefix when the cluster is large enough.
        width = max(int(counts.max()), num_instances)
        keys = rng.random((mine.size, width))
        keys[np.arange(width)[None, :] >= counts[mine][:, None]] = np.inf
        ranked = np.argsort(keys, axis=1)[:, :num_instances]  # P x K (offsets, maybe beyond the cluster)
        offsets = np.where(
            ranked < counts[mine][:, None], ranked, rng.integers(0, counts[mine][:, None], size=ranked.shape)
        )
        batches.append(order[starts[mine][:, None] + offsets].reshape(-1))
    return batches
