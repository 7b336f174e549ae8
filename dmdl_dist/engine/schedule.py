"""The recipe's schedules within each stage: learning rate, triplet weight, warm-ups, joint sampling.

The release writes its milestones as epochs of 50-epoch stages (confidence from epoch 30, triplet
steps at 16, 26, 36 and 11, 21, joint batches from 40); the config holds them as shares of the
stage, so a preset with other stage lengths keeps the same shape and the real-data presets land
on the release's exact epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dmdl_dist.config import Config
from dmdl_dist.engine.step import StepSettings


def milestone(share: float, stage_epochs: int) -> int:
    """The first epoch (0-based, within the stage) at or after `share` of the stage: round half up."""
    return math.floor(share * stage_epochs + 0.5)


def stage_of(epoch: int, cfg: Config) -> tuple[int, int]:
    """(stage, epoch within the stage) of a global epoch number."""
    s1 = cfg.train.stage1_epochs
    return (1, epoch) if epoch < s1 else (2, epoch - s1)


def stage_epochs(cfg: Config, stage: int) -> int:
    return cfg.train.stage1_epochs if stage == 1 else cfg.train.stage2_epochs


def lr_at(cfg: Config, epoch_in_stage: int, workers: int = 1) -> float:
    """Step decay x lr_gamma every lr_step epochs, restarted at each stage; scaled for dist.batch=per_worker."""
    scale = 1.0
    if cfg.dist.batch == "per_worker":
        scale = {"none": 1.0, "linear": float(workers), "sqrt": math.sqrt(workers)}[cfg.train.lr_scale]
    return scale * cfg.train.lr * cfg.train.lr_gamma ** (epoch_in_stage // cfg.train.lr_step)


def step_weight(starts: Sequence[float], weights: Sequence[float], epoch_in_stage: int, epochs: int) -> float:
    """The weight of the last step reached by this epoch (0 before the first)."""
    current = 0.0
    for share, weight in zip(starts, weights, strict=True):
        if epoch_in_stage >= milestone(share, epochs):
            current = weight
    return current


def triplet_weight(cfg: Config, stage: int, epoch_in_stage: int) -> float:
    if not cfg.train.triplet:
        return 0.0
    t = cfg.train
    starts, weights = ((t.triplet_from_stage1, t.triplet_weights_stage1) if stage == 1
                       else (t.triplet_from_stage2, t.triplet_weights_stage2))
    return step_weight(starts, weights, epoch_in_stage, stage_epochs(cfg, stage))


def joint_sampling(cfg: Config, stage: int, epoch_in_stage: int) -> bool:
    """Stage 2, late: batches draw the same shared labels in both modalities (and a joint triplet is added)."""
    return stage == 2 and epoch_in_stage >= milestone(cfg.train.joint_from_stage2, cfg.train.stage2_epochs)


def step_settings(cfg: Config, stage: int, epoch_in_stage: int) -> StepSettings:
    return StepSettings(
        stage=stage,
        triplet_weight=triplet_weight(cfg, stage, epoch_in_stage),
        joint=joint_sampling(cfg, stage, epoch_in_stage) and cfg.train.triplet,
        soft_targets=cfg.cbt.refine,
        topk=cfg.cbt.topk_stage1 if stage == 1 else cfg.cbt.topk_stage2,
        cai_weight=cfg.cai.weight if (stage == 2 and cfg.cai.enabled) else 0.0,
        cai_temperature=cfg.cai.temperature,
        mmd_weight=cfg.cbt.mmd_weight if (cfg.cbt.mmd and cfg.cbt.augment) else 0.0,
        triplet_margin=cfg.train.triplet_margin,
        mmd_kernels=cfg.cbt.mmd_kernels,
        mmd_mul=cfg.cbt.mmd_mul,
        global_batch=cfg.dist.batch == "global",
    )
