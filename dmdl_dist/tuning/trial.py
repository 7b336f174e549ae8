"""One trial of a sweep: Tune's driver function fits one Ray Train run and forwards its epoch reports.

Imported by Tune's trial actors only (it imports Ray at the top); the sweep driver names it lazily.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from dmdl_dist.tuning.schedule import TIME_ATTR


class TrialEpochReport(TuneReportCallback):
    """Tune's report of each epoch, plus `trial_epoch`: the epoch counted from where the trial started.

    A trial that starts from a shared stage 1 reports epochs stage1_epochs + 1, ...; counted from
    there, ASHA's grace period and rungs fall on stage-2 epochs, the only ones where trials differ.
    """

    def __init__(self, start_epoch: int):
        super().__init__()
        self.start_epoch = start_epoch

    def after_report(self, run_context, metrics, checkpoint):
        first = dict(metrics[0])
        if "epoch" in first:
            first[TIME_ATTR] = first["epoch"] - self.start_epoch
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


def run_trial(params: dict, *, base: dict, runs_local: str, runs_storage: str, init_from: str | None = None,
              start_epoch: int = 0) -> None:
    """Tune's trainable: fits one Ray Train run (its stage 2 only, from `init_from`, when it shares stage 1)."""
    from dmdl_dist.distributed.launcher import make_trainer
    from dmdl_dist.tuning.sweep import trial_config

    cfg = trial_config(base, params if init_from is None else {**params, "train.init_from": init_from})
    trial_id = tune.get_context().get_trial_id()
    trainer = make_trainer(cfg, Path(runs_local) / trial_id, name=trial_id, storage_path=runs_storage,
                           callbacks=[TrialEpochReport(start_epoch)])
    trainer.fit()  # raises when the run fails, which marks the trial as errored
