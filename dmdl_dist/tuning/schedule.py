"""ASHA for a sweep: on the epochs each trial trains itself, so a shared stage 1 is never a rung."""

from __future__ import annotations

from dmdl_dist.config import Config
from dmdl_dist.tuning.space import Dist, SearchSpace

TIME_ATTR = "trial_epoch"  # what ASHA counts: the epochs a trial trained itself (from stage 2 with a shared stage 1)


def max_epochs(space: SearchSpace, cfg: Config, *, shared: bool = False) -> int:
    """The longest schedule any trial trains itself (the space may search the stage lengths); with a shared
    stage 1, its stage 2 only."""

    def most(key: str, default: int) -> int:
        d = space.params.get(key, default)
        return max(d.candidates()) if isinstance(d, Dist) else int(d)

    stage2 = most("train.stage2_epochs", cfg.train.stage2_epochs)
    return stage2 if shared else most("train.stage1_epochs", cfg.train.stage1_epochs) + stage2


def make_scheduler(space: SearchSpace, cfg: Config, *, shared: bool = False):
    """ASHA on the epochs a trial trains itself (TIME_ATTR, added by tuning/trial.py), rungs before the last.

    With a shared stage 1 the count starts at stage 2, so the grace period and every rung fall on
    stage-2 epochs: a rung on a stage-1 epoch would compare trials that are still the same run.
    A decision at the last epoch saves nothing, and stopping a trial then (what ASHA does at
    max_t by default) kills its driver while the run still finishes (seen here: report.md lost); so
    max_t is the second-to-last epoch and trials past it are never stopped.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    epochs = max_epochs(space, cfg, shared=shared)
    if epochs < 2:
        return FIFOScheduler()
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=epochs - 1, grace_period=1, stop_last_trials=False)
