"""Identity-balanced batches, P pseudo-identities x K instances, drawn as one global batch and split across workers.

The release (utils/data/sampler.py RandomMultipleGallerySampler and its inter-modality twin) draws
each modality's batch of 8 x 16 on one process. Here one generator, seeded alike on every rank,
draws that same global batch; rank r keeps the r-th contiguous chunk of its P * K indices, so the
batch does not depend on the number of workers. Each chunk carries its positions in the global batch
(0 .. P*K-1), from which per-sample augmentation seeds are derived.

Rules taken from the release:
- Identities: an epoch walks a random permutation of the labels, P at a time; the tail of fewer than
  P labels is dropped (DataLoader drop_last) and a fresh permutation starts.
- Instances: one anchor image drawn uniformly from the identity, then K - 1 drawn from a pool. With
  camera_aware the pool is the identity's images from cameras other than the anchor's; when the
  identity has no other camera it falls back to the identity's images other than the anchor (same
  camera). Without camera awareness the pool is always the identity's images other than the anchor.
  The K - 1 come without replacement when the pool holds at least K images (at least K - 1 in the
  joint sampler: the release's two samplers differ here), with replacement otherwise.
- The joint sampler builds one pass over the labels of either modality per epoch and cycles it
  (the release builds its index list once, when the loader is made), so a long epoch repeats the
  same batches; a label missing in one modality is replaced there by a uniformly drawn label.
Where the release has no rule, ours: an identity with a single image repeats it K times (the
release's joint sampler does so; its single-modality sampler emits the anchor alone and so breaks
the P x K shape); fewer than P labels give batches of all labels plus P - (labels) drawn with
replacement (the release would stop with an empty loader).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    """This rank's share of one global P x K batch."""

    index: np.ndarray  # n: dataset indices (rows of the modality's training list), identity-major
    position: np.ndarray  # n: their places in the global batch, 0 .. P*K-1

    def __len__(self) -> int:
        return int(self.index.shape[0])


class _Identities:
    """One modality's pseudo-labelled samples, grouped by label and, within a label, by camera."""

    def __init__(self, labels: np.ndarray, camids: np.ndarray | None, camera_aware: bool, name: str = ""):
        labels = np.asarray(labels).reshape(-1)
        if camera_aware and camids is None:
            raise ValueError("camera-aware sampling needs the camera id of every sample (camids)")
        cams = np.zeros_like(labels) if camids is None else np.asarray(camids).reshape(-1)
        if cams.shape != labels.shape:
            raise ValueError(f"{name}labels {labels.shape} and camids {cams.shape} differ in shape")
        valid = np.flatnonzero(labels >= 0)
        if valid.size == 0:
            raise ValueError(f"no {name}pseudo-labelled samples to draw batches from (every sample is an outlier)")
        # Sorted by label, then camera, then index: a label's images and a camera's within it are runs.
        self.order = valid[np.lexsort((cams[valid], labels[valid]))]
        lab, cam = labels[self.order], cams[self.order]
        self.labels, self.start, self.count = np.unique(lab, return_index=True, return_counts=True)
        new_run = np.r_[True, (lab[1:] != lab[:-1]) | (cam[1:] != cam[:-1])]
        run_start = np.flatnonzero(new_run)
        run_end = np.r_[run_start[1:], lab.size]
        run = np.cumsum(new_run) - 1
        self.cam_lo, self.cam_hi = run_start[run], run_end[run]  # per sorted position: its camera's run
        self.camera_aware = camera_aware

    def draw(self, rng: np.random.Generator, ids: np.ndarray, k: int, without_replacement_from: int) -> np.ndarray:
        """K dataset indices for each identity in ids (indices into self.labels): P -> P x K, anchor first."""
        p, need = ids.size, k - 1
        start, count = self.start[ids], self.count[ids]  # P
        anchor = start + rng.integers(0, count)  # P, sorted positions
        # The pool is the identity's run minus a hole [lo, hi): the anchor's camera, or the anchor alone.
        lo, hi = anchor, anchor + 1
        if self.camera_aware:
            cam_lo, cam_hi = self.cam_lo[anchor], self.cam_hi[anchor]
            other = count > cam_hi - cam_lo
            lo, hi = np.where(other, cam_lo, lo), np.where(other, cam_hi, hi)
        size = count - (hi - lo)  # P: pool sizes
        width = max(int(size.max()), need)
        keys = rng.random((p, width))  # a random permutation prefix per row
        keys[np.arange(width)[None, :] >= size[:, None]] = np.inf
        unique = np.argsort(keys, axis=1)[:, :need]  # P x (K-1)
        repeated = rng.integers(0, np.maximum(size, 1)[:, None], size=(p, need))  # P x (K-1)
        offset = np.where((size >= without_replacement_from)[:, None], unique, repeated)
        pos = start[:, None] + offset
        pos = np.where(pos >= lo[:, None], pos + (hi - lo)[:, None], pos)  # skip the hole
        pos = np.where((size == 0)[:, None], anchor[:, None], pos)  # a single image: repeat it
        return self.order[np.concatenate([anchor[:, None], pos], axis=1)]


def _label_rows(rng: np.random.Generator, n_labels: int, p: int, rows: int) -> np.ndarray:
    """rows x P label ids: consecutive P of a random permutation, tail dropped, a new permutation per pass."""
    if rows == 0:
        return np.zeros((0, p), dtype=np.int64)
    if n_labels < p:
        return np.stack([np.r_[rng.permutation(n_labels), rng.integers(0, n_labels, p - n_labels)]
                         for _ in range(rows)]).reshape(rows, p)
    per_pass = n_labels // p
    passes = [rng.permutation(n_labels)[: per_pass * p].reshape(per_pass, p) for _ in range(-(-rows // per_pass))]
    return np.concatenate(passes or [np.zeros((0, p), dtype=np.int64)])[:rows]


def _check_split(num_pids: int, num_instances: int, rank: int, world: int) -> None:
    if num_pids < 1 or num_instances < 1:
        raise ValueError(f"a batch needs num_pids >= 1 and num_instances >= 1, got {num_pids} x {num_instances}")
    total = num_pids * num_instances
    if world < 1 or total % world:
        fits = [n for n in range(1, total + 1) if total % n == 0]
        raise ValueError(f"{world} workers cannot split the global batch of {num_pids} x {num_instances} = {total} "
                         f"samples equally; worker counts that can: {fits}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0 .. {world - 1}")


def _share(flat: np.ndarray, rank: int, world: int) -> Batch:
    """Rank r's contiguous chunk of a flat global batch."""
    chunk = flat.size // world
    position = np.arange(rank * chunk, (rank + 1) * chunk)
    return Batch(index=flat[position], position=position)


def balanced_batches(
    labels: np.ndarray,
    camids: np.ndarray | None,
    num_pids: int,
    num_instances: int,
    num_batches: int,
    *,
    seed: int | Sequence[int],
    rank: int = 0,
    world: int = 1,
    camera_aware: bool = True,
) -> list[Batch]:
    """num_batches steps of one modality: this rank's share of each global P x K batch.

    labels: N pseudo-labels (< 0: outlier, never drawn); camids: N camera ids (None only when
    camera_aware is False). The global batch lists P identities, each as its anchor then K - 1
    instances (module docstring for the rules), and depends only on (labels, camids, seed): world
    must divide P * K, and rank r gets positions [r * P*K / world, (r + 1) * P*K / world).
    """
    _check_split(num_pids, num_instances, rank, world)
    ident = _Identities(labels, camids, camera_aware)
    rng = np.random.default_rng(seed)  # identical on every rank
    rows = _label_rows(rng, ident.labels.size, num_pids, num_batches)  # num_batches x P
    return [_share(ident.draw(rng, ids, num_instances, num_instances).reshape(-1), rank, world) for ids in rows]


def joint_batches(
    labels_vis: np.ndarray,
    camids_vis: np.ndarray | None,
    labels_ir: np.ndarray,
    camids_ir: np.ndarray | None,
    num_pids: int,
    num_instances: int,
    num_batches: int,
    *,
    seed: int | Sequence[int],
    rank: int = 0,
    world: int = 1,
    camera_aware: bool = True,
) -> list[tuple[Batch, Batch]]:
    """num_batches steps of (visible, infrared) batches that draw the same shared labels, late stage 2.

    Labels live in the shared space of stage 2. One pass walks a random permutation of the labels of
    either modality, P at a time; each label draws K visible and K infrared instances (a label that
    one modality lacks is replaced there by one of its labels, drawn uniformly). As in the release
    the pass is drawn once and cycled, tail dropped. Both batches are split across ranks like
    balanced_batches' and share their positions.
    """
    _check_split(num_pids, num_instances, rank, world)
    vis = _Identities(labels_vis, camids_vis, camera_aware, "visible ")
    ir = _Identities(labels_ir, camids_ir, camera_aware, "infrared ")
    union = np.union1d(vis.labels, ir.labels)
    rng = np.random.default_rng(seed)  # identical on every rank
    rows = _label_rows(rng, union.size, num_pids, max(union.size // num_pids, 1))  # one pass: passes x P
    steps = []
    for row in rows:
        pair = []
        for ident in (vis, ir):
            ids = np.searchsorted(ident.labels, union[row])  # P
            missing = ident.labels[np.minimum(ids, ident.labels.size - 1)] != union[row]
            ids = np.where(missing, rng.integers(0, ident.labels.size, size=row.size), ids)
            pair.append(_share(ident.draw(rng, ids, num_instances, num_instances - 1).reshape(-1), rank, world))
        steps.append(tuple(pair))
    return [steps[i % len(steps)] for i in range(num_batches)]
