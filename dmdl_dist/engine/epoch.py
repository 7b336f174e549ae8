"""One training epoch: the batches of each modality, iters_per_epoch steps, the memory updates, the step log.

The recipe's batch is global. Every worker draws the same global P x K batch per modality (the
sampler's generator is seeded alike everywhere), keeps its contiguous share of it, and decodes only
those images; each image's augmentation is seeded by (run seed, epoch, step, position in the global
batch, modality), so it gets the same two views on any number of workers or loader processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dmdl_dist.config import Config
from dmdl_dist.data.images import ImageDataset
from dmdl_dist.data.samplers import balanced_batches, joint_batches
from dmdl_dist.data.transforms import sample_seed, single_view, train_views
from dmdl_dist.distributed import comm
from dmdl_dist.distributed.backend import Engine
from dmdl_dist.engine.data import RunData
from dmdl_dist.engine.recluster import Refresh
from dmdl_dist.engine.step import LOCAL_LOSSES, Batch, StepSettings, train_step, update_memories

MODALITIES = (0, 1)  # visible, infrared


@dataclass
class EpochPlan:
    stage: int
    epoch: int  # global, 0-based
    settings: StepSettings
    joint: bool  # batches draw the same shared labels in both modalities


def loader_workers(cfg: Config) -> int:
    """Data loader processes: data.loader_workers, at most what a Ray worker's CPUs leave beside the trainer."""
    if cfg.dist.workers > 0:
        return min(cfg.data.loader_workers, max(0, int(cfg.dist.cpus_per_worker) - 1))
    return cfg.data.loader_workers


def _transform(cfg: Config, m: int, stage: int):
    erase_area = cfg.cbt.erase_max_area if stage == 1 else cfg.cbt.erase_max_area_stage2
    if cfg.cbt.augment:
        return train_views(m, cfg.data.height, cfg.data.width, erase_p=cfg.cbt.erase_p, gray_p=cfg.cbt.gray_p,
                           erase_max_area=erase_area, pad=cfg.data.pad)
    return single_view(m, cfg.data.height, cfg.data.width, erase_p=cfg.cbt.erase_p, erase_max_area=erase_area,
                       pad=cfg.data.pad)


def _sampler_args(cfg: Config, plan: EpochPlan) -> dict:
    """The global batch split across ranks, or (dist.batch=per_worker) a whole batch per rank."""
    seed = cfg.train.seed * 100003 + plan.epoch
    if cfg.dist.batch == "global":
        return dict(seed=seed, rank=comm.rank(), world=comm.world_size())
    return dict(seed=seed * 1009 + comm.rank(), rank=0, world=1)


def epoch_batches(data: RunData, ref: Refresh, cfg: Config, plan: EpochPlan) -> list[list]:
    """Per modality, per step: this rank's (dataset index, augmentation seed) keys."""
    labels = [ref.labels.train_labels(m) for m in MODALITIES]
    common = dict(num_pids=cfg.data.num_pids, num_instances=cfg.data.num_instances,
                  num_batches=cfg.train.iters_per_epoch, camera_aware=cfg.data.camera_aware, **_sampler_args(cfg, plan))
    if plan.joint:
        pairs = joint_batches(labels[0], data.train_camids[0], labels[1], data.train_camids[1], **common)
        drawn = [[p[m] for p in pairs] for m in MODALITIES]
    else:
        drawn = [balanced_batches(labels[m], data.train_camids[m], **common) for m in MODALITIES]
    batch = cfg.data.num_pids * cfg.data.num_instances
    offset = comm.rank() * batch if cfg.dist.batch == "per_worker" else 0  # distinct augmentation per rank
    return [[[(int(i), sample_seed(cfg.train.seed, plan.epoch, step, int(p) + offset, m))
              for i, p in zip(b.index, b.position, strict=True)] for step, b in enumerate(drawn[m])]
            for m in MODALITIES]


def modality_loaders(data: RunData, ref: Refresh, cfg: Config, plan: EpochPlan) -> list[DataLoader]:
    """One loader per modality yielding this rank's share of each step's batch as (views, dataset index)."""
    keys = epoch_batches(data, ref, cfg, plan)
    return [DataLoader(ImageDataset(data.root, data.train_paths[m], _transform(cfg, m, plan.stage),
                                    cache=data.train_cache(m)),
                       batch_sampler=keys[m], num_workers=loader_workers(cfg)) for m in MODALITIES]


def train_one_epoch(engine: Engine, data: RunData, ref: Refresh, cfg: Config, plan: EpochPlan, *,
                    device: torch.device, progress: bool) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Runs iters_per_epoch steps; returns (the mean of every named loss, every step's losses).

    Logged values are global: losses averaged over a rank's rows are averaged over the ranks.
    """
    engine.train()
    steps: dict[str, list[float]] = {}
    loaders = modality_loaders(data, ref, cfg, plan)
    bar = tqdm(zip(*loaders, strict=True), total=cfg.train.iters_per_epoch, disable=not progress, leave=False,
               desc=f"epoch {plan.epoch + 1} stage {plan.stage}", unit="it")
    for step, step_batches in enumerate(bar):
        if step == cfg.train.iters_per_epoch - 1:
            comm.fault_point(f"epoch{plan.epoch + 1}")
        batches = []
        for m, (views, idx) in enumerate(step_batches):
            views = list(views) if isinstance(views, (list, tuple)) else [views]
            idx_np = idx.numpy()
            batches.append(Batch(
                views=[v.to(device, non_blocking=True) for v in views],
                labels=torch.as_tensor(ref.labels.train_labels(m)[idx_np], device=device),
                confidence=torch.as_tensor(ref.confidence[m][idx_np], device=device),
            ))
        losses, feats = train_step(engine, batches, ref.memories, plan.settings)
        total = sum(losses.values())
        logged = _logged(losses)
        if not np.isfinite(sum(logged.values())):
            raise FloatingPointError(f"non-finite loss at epoch {plan.epoch + 1}, step {step + 1}: "
                                     f"{ {k: round(v, 4) for k, v in logged.items()} }")
        engine.step(total)
        update_memories(ref.memories, batches, feats, stage=plan.stage, adaptive=cfg.cai.adaptive_momentum)
        for k, v in {**logged, "total": sum(logged.values())}.items():
            steps.setdefault(k, []).append(v)
        bar.set_postfix(loss=f"{steps['total'][-1]:.3f}")
    return {k: float(np.mean(v)) for k, v in steps.items()}, steps


def _logged(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Global values of a step's losses: the per-row ones averaged over ranks (one all-reduce)."""
    names = list(losses)
    values = torch.stack([losses[k].detach().float() for k in names])
    averaged = comm.mean_over_ranks(values)
    return {k: float(averaged[i] if k in LOCAL_LOSSES else values[i]) for i, k in enumerate(names)}
