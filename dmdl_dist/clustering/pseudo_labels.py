"""Pseudo-labels for one epoch: per-modality Jaccard + DBSCAN, then (stage 2) cross-modality association.

Pure functions over feature arrays; the distributed clustering service gathers the features,
splits the k-NN search over every worker (distributed/knn.py), calls `make_pseudo_labels` once
with the neighbours and sends the result to every worker.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dmdl_dist.clustering.association import associate_hungarian, associate_nearest
from dmdl_dist.clustering.dbscan import dbscan_labels
from dmdl_dist.clustering.jaccard import jaccard_distance, knn_for_jaccard
from dmdl_dist.clustering.knn import Neighbours

VISIBLE, INFRARED = 0, 1


@dataclass
class PseudoLabels:
    labels: list[np.ndarray]  # per modality: N_m cluster ids of its own clustering, -1 for outliers
    num_clusters: list[int]
    shared: list[np.ndarray] | None = None  # stage 2, per modality: N_m shared labels, -1 for outliers
    num_shared: int = 0  # stage 2: U, the anchor modality's cluster count for DMDL's matching
    anchor: int | None = None  # stage 2: the modality whose clusters are the shared labels
    k1: list[int] = field(default_factory=list)  # per modality, the k1 it was clustered with
    matching: str = ""  # stage 2: "cluster" or "sample" (RegDB's nearest-image matching)
    timings: dict[str, float] = field(default_factory=dict)

    def outlier_fraction(self, m: int) -> float:
        labels = self.shared[m] if self.shared is not None else self.labels[m]
        return float((labels < 0).mean()) if labels.size else 0.0

    def association_rate(self) -> float:
        """Stage 2: the share of shared labels that have samples in both modalities (0 in stage 1)."""
        if self.shared is None or self.num_shared == 0:
            return 0.0
        present = [np.unique(s[s >= 0]) for s in self.shared]
        return len(np.intersect1d(*present)) / self.num_shared

    def digest(self) -> str:
        """A short hash of every label array: equal digests, equal pseudo-labels (runs compare by it)."""
        arrays = [*self.labels, *(self.shared or [])]
        return hashlib.sha1(b"".join(np.ascontiguousarray(a, np.int64).tobytes() for a in arrays)).hexdigest()[:16]

    def train_labels(self, m: int) -> np.ndarray:
        """The labels modality m trains on: its clusters in stage 1, the shared labels in stage 2."""
        return self.labels[m] if self.shared is None else self.shared[m]


def cluster_features(
    features: np.ndarray, *, k1: int, k2: int, eps: float, min_samples: int, timings: dict[str, float], tag: str,
    knn_backend: str = "auto", device: str | None = None, neighbours: Neighbours | None = None,
) -> np.ndarray:
    """Jaccard distance + DBSCAN labels of one modality's features.

    neighbours: knn_for_jaccard(features, k1) found elsewhere (the sharded k-NN service, which
    times it itself); None searches here with knn_backend on device.
    """
    t0 = time.perf_counter()
    x = np.ascontiguousarray(features, dtype=np.float32)
    if neighbours is None:
        neighbours = knn_for_jaccard(x, k1, backend=knn_backend, device=device)
        timings[f"knn_{tag}"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    dist = jaccard_distance(x, k1=k1, k2=k2, neighbours=neighbours)
    t2 = time.perf_counter()
    labels = dbscan_labels(dist, eps=eps, min_samples=min_samples)
    timings[f"jaccard_{tag}"] = t2 - t1
    timings[f"dbscan_{tag}"] = time.perf_counter() - t2
    return labels


def _centroids(features: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    sums = np.zeros((n, features.shape[1]), dtype=np.float64)
    keep = labels >= 0
    np.add.at(sums, labels[keep], features[keep])
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def nearest_sample_labels(source: np.ndarray, anchor: np.ndarray, anchor_labels: np.ndarray,
                          block: int = 4096) -> np.ndarray:
    """Each source sample takes the label of its most similar anchor sample (outlier labels included)."""
    out = np.empty(source.shape[0], dtype=np.int64)
    for start in range(0, source.shape[0], block):
        sims = source[start : start + block] @ anchor.T  # b x N_anchor
        out[start : start + block] = anchor_labels[sims.argmax(axis=1)]
    return out


def shared_space(labels: list[np.ndarray], counts: list[int], features: list[np.ndarray], anchor: int,
                 association: str, sample_level: bool) -> tuple[list[np.ndarray], int, str]:
    """(per-sample shared labels per modality, U, how they were matched) for DMDL's stage 2.

    The shared labels are the anchor modality's clusters (U = their count). "nearest" maps each source
    cluster to its nearest anchor centroid (cost exp(-cos), the release's), so several source clusters
    can share a label; "hungarian" ties clusters one-to-one and gives unmatched source clusters labels
    of their own after the anchor's; sample-level matching (RegDB) gives each source image the label
    of its nearest anchor image, its own clustering unused.
    """
    source = 1 - anchor
    shared = [None, None]
    shared[anchor] = labels[anchor].astype(np.int64)
    if sample_level:
        shared[source] = nearest_sample_labels(features[source], features[anchor], labels[anchor])
        return shared, counts[anchor], "sample"
    cents = [_centroids(f, lab, n) for f, lab, n in zip(features, labels, counts, strict=True)]
    if association == "hungarian":
        assoc = associate_hungarian(cents[VISIBLE], cents[INFRARED])
        to_anchor = assoc.vis_to_ir if anchor == INFRARED else assoc.ir_to_vis
        unmatched = np.flatnonzero(to_anchor < 0)
        mapping = to_anchor.copy()
        mapping[unmatched] = counts[anchor] + np.arange(len(unmatched))
        num_shared = counts[anchor] + len(unmatched)
    else:
        assoc = associate_nearest(cents[VISIBLE], cents[INFRARED], direction="v2i" if anchor == INFRARED else "i2v")
        mapping = assoc.vis_to_ir if anchor == INFRARED else assoc.ir_to_vis
        num_shared = counts[anchor]
    src = labels[source]
    shared[source] = np.where(src >= 0, mapping[np.maximum(src, 0)] if len(mapping) else -1, -1).astype(np.int64)
    return shared, num_shared, "cluster"


def modality_k1(stage: int, epoch_in_stage: int, k1: int, k1_source: int) -> list[int]:
    """k1 per modality: k1 in stage 1; in stage 2 the anchor's k1 and the source's k1_source."""
    anchor = anchor_of(epoch_in_stage) if stage == 2 else None
    return [k1 if stage == 1 or m == anchor else k1_source for m in (VISIBLE, INFRARED)]


def anchor_of(epoch_in_stage: int) -> int:
    """Stage 2's anchor modality: infrared on even stage-2 epochs (visible maps onto it), visible on odd."""
    return INFRARED if epoch_in_stage % 2 == 0 else VISIBLE


def make_pseudo_labels(
    features: list[np.ndarray],
    *,
    stage: int,
    epoch_in_stage: int,
    k1: int,
    k1_source: int,
    k2: int,
    eps: float,
    min_samples: int,
    association: str = "nearest",
    sample_matching: str = "never",
    knn_backend: str = "auto",
    device: str | None = None,
    neighbours: Sequence[Neighbours | None] | None = None,
) -> PseudoLabels:
    """Clusters each modality; in stage 2 also maps both modalities into the anchor's shared label space.

    Stage 2 alternates with the stage-2 epoch: even epochs infrared is the anchor (clustered with k1,
    visible with k1_source) and visible clusters map onto it; odd epochs the reverse. With
    sample_matching="regdb", stage-2 epochs with epoch mod 5 >= 2 match images instead of clusters.
    neighbours: per modality, knn_for_jaccard(features[m], k1 of m) found elsewhere (the sharded
    k-NN service); None searches here (knn_backend on device, as in clustering.knn.knn).
    """
    timings: dict[str, float] = {}
    anchor = anchor_of(epoch_in_stage) if stage == 2 else None
    k1s = modality_k1(stage, epoch_in_stage, k1, k1_source)
    found = [None, None] if neighbours is None else list(neighbours)
    labels = [
        cluster_features(f, k1=k, k2=k2, eps=eps, min_samples=min_samples, timings=timings, tag=tag,
                         knn_backend=knn_backend, device=device, neighbours=nb)
        for f, k, tag, nb in zip(features, k1s, ("visible", "infrared"), found, strict=True)
    ]
    counts = [int(lab.max()) + 1 if lab.size else 0 for lab in labels]
    result = PseudoLabels(labels=labels, num_clusters=counts, anchor=anchor, k1=k1s, timings=timings)
    if stage == 2:
        t0 = time.perf_counter()
        sample_level = sample_matching == "regdb" and epoch_in_stage % 5 >= 2
        result.shared, result.num_shared, result.matching = shared_space(
            labels, counts, features, anchor, association, sample_level)
        timings["association"] = time.perf_counter() - t0
    return result


def true_identity_labels(pids: list[np.ndarray], *, stage: int, epoch_in_stage: int) -> PseudoLabels:
    """The supervised ceiling: true identities, per modality in stage 1, shared across modalities in stage 2."""
    ids = np.unique(np.concatenate(pids))
    shared = [np.searchsorted(ids, p).astype(np.int64) for p in pids]
    labels, counts = [], []
    for s in shared:
        own_ids, own = np.unique(s, return_inverse=True)
        labels.append(own.astype(np.int64).reshape(-1))
        counts.append(len(own_ids))
    if stage == 1:
        return PseudoLabels(labels, counts, k1=[0, 0])
    return PseudoLabels(labels, counts, shared=shared, num_shared=len(ids), anchor=anchor_of(epoch_in_stage),
                        k1=[0, 0], matching="identity")
