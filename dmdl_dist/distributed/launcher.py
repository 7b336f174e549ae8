"""Runs the per-worker training function on a Ray Train TorchTrainer (Ray 2.60, Train V2 API)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

from dmdl_dist.config import Config, from_dict, to_dict, total_epochs


def _worker(loop_config: dict) -> None:
    """Inside each Ray worker: the same `train` as local mode, with Ray's session."""
    from dmdl_dist.distributed import comm
    from dmdl_dist.distributed.session import RaySession
    from dmdl_dist.engine.trainer import silent, train

    _quiet_ray_reports()
    cfg = from_dict(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    session = RaySession(run_dir, launch_id=loop_config.get("launch_id", ""))
    # The driver prints the epoch lines (distributed/progress.py) and the results table; workers stay quiet.
    results = train(cfg, run_dir, progress=False, echo=silent, session=session)
    if comm.is_main() and cfg.run.report and "test" in results:
        from dmdl_dist.report.report import write_report  # on rank 0's node, where the test set is

        write_report(run_dir)


def _quiet_ray_reports() -> None:
    """Ray logs each report's whole metrics dict at INFO from every worker; the driver's line says it once."""
    try:
        from ray.train.v2._internal.execution import context  # private: the logger is named after this file
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def connect(num_cpus: int | None = None) -> None:
    """Joins a running cluster when there is one (ray.init(address="auto")), else starts a local one."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address="auto", include_dashboard=False)
    except ConnectionError:
        ray.init(num_cpus=num_cpus, include_dashboard=False)


def make_trainer(
    cfg: Config,
    run_dir: str | Path,
    *,
    name: str | None = None,
    storage_path: str | None = None,
    callbacks: Sequence = (),
    progress: bool = True,
):
    """The TorchTrainer of one run, not yet fitted (Tune's driver functions build theirs here too).

    Checkpoints go to Ray storage under <storage_path>/<name> (defaults: cfg.dist.storage_path or
    the run folder's parent, and the run folder's name, so they land in the run folder); fitting
    a trainer with the same name and storage path again resumes from its latest checkpoint, and
    FailureConfig restarts the worker group after a worker dies.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dmdl_dist.distributed.progress import epoch_printer

    run_dir = Path(run_dir).resolve()
    d = cfg.dist
    resources = {"CPU": d.cpus_per_worker}
    if d.gpus_per_worker > 0:
        resources["GPU"] = d.gpus_per_worker
    return TorchTrainer(
        _worker,
        train_loop_config={"config": to_dict(cfg), "run_dir": str(run_dir),
                           "launch_id": uuid.uuid4().hex},
        scaling_config=ScalingConfig(num_workers=d.workers, use_gpu=d.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(timeout_s=3600),  # a long clustering refresh must not time out the others
        run_config=RunConfig(
            name=name or run_dir.name,
            storage_path=storage_path or d.storage_path or str(run_dir.parent),
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[*callbacks, *([epoch_printer(total_epochs(cfg))]
                                      if progress else [])],
        ),
    )


def launch(cfg: Config, run_dir: str | Path, *, progress: bool = True):
    """Trains with cfg.dist.workers Ray workers; returns Ray's Result (the same run name resumes)."""
    connect()
    return make_trainer(cfg, run_dir, progress=progress).fit()
