"""A Ray Tune sweep of Ray Train runs (Train V2): one driver function per trial fits one TorchTrainer.

Folder of a sweep `<out>/<name>/`:
  sweep.yaml             the base config, the space, the search and the sizes it was started with (resume
                         checks them), and the shared stage 1 when there is one
  stage1/                the shared stage-1 run of a space of stage-2 keys (tuning/stage1.py), when trained here
  runs/<trial id>/       each trial's run folder (config.yaml, metrics.jsonl, best.pt, results.json) and,
                         with local storage, its Ray Train checkpoints
  trial_<trial id>/      Tune's per-trial folder (reported results)
  tuner.pkl, experiment_state-*.json   Tune's state, what `Tuner.restore` reads
  trials.parquet, summary.md, best_config.yaml   written by `results.write_results` at the end
  confirm/               with --confirm-seeds: the best config trained again with other seeds (tuning/confirm.py)
With dist.storage_path set (shared storage, s3://, gs://), Tune's state and the trials' Ray Train
checkpoints go to <storage_path>/<name> instead, and the rest stays in <out>/<name>.

A trial's Ray Train run is named by its Tune trial id, so a restored trial refits a trainer with the
same name and storage path and Ray Train resumes it from its latest epoch checkpoint.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from dmdl_dist.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    to_dict,
    validate,
)
from dmdl_dist.engine.atomic import write_text
from dmdl_dist.tuning.schedule import make_scheduler
from dmdl_dist.tuning.search import check_search, make_search
from dmdl_dist.tuning.space import SearchSpace, check_space, grid_size, param_space
from dmdl_dist.tuning.stage1 import SharedStage1, check_shared_space, prepare_stage1, shares_stage1

log = logging.getLogger("dmdl_dist")

SWEEP_FILE = "sweep.yaml"
DRIVER_CPU = 0.01  # the trial's driver function only waits on the Train controller
VAL_DATASETS = ("sysu", "synthvi")  # the readers that hold identities out for validation
METRICS = ("val_mAP", "val_rank1")  # what a trial reports each epoch on held-out training identities


@dataclass
class Sweep:
    """What one `dmdl tune` launches."""

    name: str
    out: Path  # the sweep lives in out/name
    base: Config  # every trial starts here; dist.workers is the workers per trial
    space: SearchSpace
    samples: int
    max_concurrent: int | None = None  # None: sized from the cluster's resources
    search: str = "random"  # or "optuna" (tuning/search.py)
    stage1_given: str | None = None  # --stage1 RUN_DIR|CKPT: the shared stage 1 to start from
    stage1: SharedStage1 | None = None  # set by run_sweep when the space shares one stage 1

    @property
    def shared(self) -> bool:
        """Every key of the space acts in stage 2: the trials start from one stage 1 (tuning/stage1.py)."""
        return shares_stage1(self.space, self.base)

    @property
    def folder(self) -> Path:
        return Path(self.out).resolve() / self.name

    @property
    def storage(self) -> str:
        """Tune's storage_path: dist.storage_path (shared storage, s3://, gs://) or the local out folder."""
        return self.base.dist.storage_path or str(Path(self.out).resolve())

    @property
    def experiment(self) -> str:
        """Where Tune keeps this sweep's state (what `Tuner.restore` reads)."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    def record(self) -> dict:
        return {"space": self.space.to_spec(), "space_file": self.space.source, "samples": self.samples,
                "search": self.search, "stage1_given": self.stage1_given,
                "stage1": self.stage1.record() if self.stage1 else None,
                "base": to_dict(self.base)}


def prepare_base(
    space: SearchSpace,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    workers: int | None = None,
) -> Config:
    """Preset, config file, the space's `base.set`, then --set: each later layer wins.

    Relative paths become absolute, since Tune runs each trial in its own working directory.
    """
    cfg = load_config(preset or space.base_preset, config_file, None)
    apply_overrides(cfg, space.base_overrides)
    apply_overrides(cfg, dict(parse_override(o) for o in overrides or []))
    if workers is not None:
        cfg.dist.workers = workers
    elif cfg.dist.workers == 0:
        cfg.dist.workers = 1
    if cfg.dist.workers < 1:
        # Train V2's local mode (num_workers=0) runs no Train callbacks: Tune would never see a metric.
        raise ConfigError(f"a sweep needs at least 1 Ray Train worker per trial, got {cfg.dist.workers}")
    if cfg.train.init_from:
        raise ConfigError(f"train.init_from={cfg.train.init_from}: a sweep sets each trial's start itself; give a "
                          "shared stage 1 with --stage1 RUN_DIR|CKPT instead")
    if cfg.data.root is not None:
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.model.pretrained not in (None, "imagenet"):
        cfg.model.pretrained = str(Path(cfg.model.pretrained).expanduser().resolve())
    validate(cfg)
    check_metric(space, cfg)
    check_space(space, cfg)
    return cfg


def check_metric(space: SearchSpace, cfg: Config) -> None:
    """Validation metrics exist only with held-out identities; fail before launching, not after."""
    if space.metric not in METRICS:
        raise ConfigError(f"{space.source}: metric '{space.metric}' is not one a trial reports for selection; "
                          f"use one of {', '.join(METRICS)}")
    if not cfg.data.holdout_val or cfg.data.dataset not in VAL_DATASETS:
        raise ConfigError(
            f"{space.source}: metric '{space.metric}' is reported only with data.holdout_val=true on "
            f"{' or '.join(VAL_DATASETS)} (got data.dataset={cfg.data.dataset}, data.holdout_val="
            f"{cfg.data.holdout_val}); trials never score on the test set"
        )
    for key in ("data.holdout_val", "data.dataset"):
        if key in space.params:
            raise ConfigError(f"{space.source}: '{key}' cannot be searched: the metric '{space.metric}' depends on it")


def trial_config(base: dict, params: dict) -> Config:
    """The config one trial trains with: the base, then the sampled params, through the CLI's override."""
    cfg = from_dict(copy.deepcopy(base))
    apply_overrides(cfg, params)
    validate(cfg)
    return cfg


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def trial_need(cfg: Config) -> dict[str, float]:
    """Resources one trial holds while it runs: its workers plus the driver."""
    d = cfg.dist
    return {"CPU": DRIVER_CPU + d.workers * d.cpus_per_worker, "GPU": d.workers * d.gpus_per_worker}


def concurrency(need: dict[str, float], available: dict[str, float], trials: int) -> int:
    """How many trials fit side by side; 0 when not even one does (Train would wait, then time out)."""
    fits = [math.floor(available.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return max(0, min([trials, *fits]))


def total_trials(space: SearchSpace, samples: int) -> int:
    return samples * grid_size(space)


def trainable(base: Config, folder: Path, experiment: str, stage1: SharedStage1 | None = None):
    """The trial driver with its fixed arguments, reserving only the driver's sliver of a CPU.

    Trials' run folders go to folder/runs, their Ray Train checkpoints to <experiment>/runs.
    """
    from ray import tune

    from dmdl_dist.tuning.trial import run_trial

    fn = tune.with_parameters(run_trial, base=to_dict(base), runs_local=str(folder / "runs"),
                              runs_storage=f"{experiment}/runs", init_from=stage1.path if stage1 else None,
                              start_epoch=stage1.epochs if stage1 else 0)
    return tune.with_resources(fn, {"cpu": DRIVER_CPU})


def _trainable(sweep: Sweep):
    return trainable(sweep.base, sweep.folder, sweep.experiment, sweep.stage1)


def sized(base: Config, trials: int, max_concurrent: int | None) -> int:
    """Trials at a time: --max-concurrent, else as many as the cluster holds (an error when not even one)."""
    import ray

    if max_concurrent is not None:
        return max(1, min(max_concurrent, trials))
    need = trial_need(base)
    n = concurrency(need, ray.cluster_resources(), trials)
    if n == 0:
        raise ConfigError(
            f"one trial needs {need} (dist.workers={base.dist.workers} x cpus/gpus_per_worker) but the "
            f"cluster has {ray.cluster_resources()}; lower the per-trial need, or give --max-concurrent when an "
            "autoscaler will add the nodes"
        )
    return n


def _check_resumable(sweep: Sweep) -> Config:
    """The base config a resumed sweep must keep: its trials already trained with it."""
    path = sweep.folder / SWEEP_FILE
    if not path.is_file():
        log.warning("%s is missing; resuming with the base config given on the command line", path)
        return sweep.base
    saved = yaml.safe_load(path.read_text())
    sweep.samples = saved["samples"]  # the restored search keeps the number it started with
    if saved["space"] != sweep.space.to_spec():
        raise ConfigError(f"sweep {sweep.folder} was started with another search space ({saved['space_file']}); "
                          "a resumed sweep keeps its space: pick a new --name to search a different one")
    if saved.get("search", "random") != sweep.search:
        raise ConfigError(f"sweep {sweep.folder} was started with --search {saved.get('search', 'random')}; a resumed "
                          "sweep keeps its search: give the same --search, or pick a new --name")
    sweep.stage1_given = saved.get("stage1_given")
    if saved.get("stage1"):
        sweep.stage1 = SharedStage1(**saved["stage1"])  # trials restored from it must start where the others did
    ours = to_dict(sweep.base)
    changed = [f"{s}.{k}" for s, sec in saved["base"].items() if isinstance(sec, dict)
               for k, v in sec.items() if ours.get(s, {}).get(k) != v]
    if changed:
        raise ConfigError(f"sweep {sweep.folder} was started with other values of {', '.join(changed)}; "
                          "resume it with the same --preset/--config/--set, or pick a new --name")
    return from_dict(saved["base"])


def unfinished_trials(sweep: Sweep, grid) -> int:
    """Trials neither finished nor errored: the sweep was interrupted (Ctrl-C) and can be resumed."""
    expected = max(len(grid), total_trials(sweep.space, sweep.samples))
    return expected - grid.num_terminated - grid.num_errors


def _write_record(sweep: Sweep) -> None:
    sweep.folder.mkdir(parents=True, exist_ok=True)
    write_text(sweep.folder / SWEEP_FILE, yaml.safe_dump(sweep.record(), sort_keys=False))


def check_sweep(sweep: Sweep) -> None:
    """What can be refused before Ray starts: the search (optuna installed?) and the shared stage 1's rules."""
    check_search(sweep.search, sweep.space)
    check_shared_space(sweep.space, sweep.base, given=sweep.stage1_given is not None)


def run_sweep(sweep: Sweep, *, resume: bool = False, verbose: int = 1, callbacks=()):
    """Runs (or, with resume, continues) the sweep; returns Tune's ResultGrid.

    Ray must already be initialised (the CLI joins a cluster or starts a local one). On resume,
    sweep.base, sweep.samples and sweep.stage1 become those the sweep was started with (sweep.yaml).
    A space of stage-2 keys first gets its shared stage 1 (trained once, or the --stage1 given).
    """
    from ray import tune

    exists = tune.Tuner.can_restore(sweep.experiment)
    if resume:
        if not exists and not (sweep.folder / SWEEP_FILE).is_file():
            raise ConfigError(f"--resume: {sweep.experiment} holds no sweep to resume")
        sweep.base = _check_resumable(sweep)
        log.info("resuming sweep %s", sweep.experiment)
        if exists:
            tuner = tune.Tuner.restore(sweep.experiment, _trainable(sweep), resume_unfinished=True,
                                       resume_errored=True)
            return tuner.fit()
        return _start(sweep, verbose, callbacks)  # interrupted before any trial started (in the shared stage 1)
    if exists or (sweep.folder / SWEEP_FILE).exists():
        raise ConfigError(f"{sweep.experiment} already holds a sweep; continue it with --resume or pick another --name")
    check_sweep(sweep)
    _write_record(sweep)
    return _start(sweep, verbose, callbacks)


def _start(sweep: Sweep, verbose: int, callbacks=()):
    """The shared stage 1 when the space has one, then a new Tuner over the space."""
    from ray import tune

    trials = total_trials(sweep.space, sweep.samples)
    n = sized(sweep.base, trials, sweep.max_concurrent)
    if sweep.shared:
        log.info("sweep %s: every key of %s acts in stage 2; its trials share one stage 1", sweep.name,
                 sweep.space.source)
        sweep.stage1 = prepare_stage1(sweep.base, sweep.folder, storage_path=sweep.experiment,
                                      given=sweep.stage1_given)
        _write_record(sweep)
    log.info("sweep %s: %d trials, %d at a time, %d worker(s) each, %s search -> %s", sweep.name, trials, n,
             sweep.base.dist.workers, sweep.search, sweep.experiment)
    tuner = tune.Tuner(
        _trainable(sweep),
        param_space=param_space(sweep.space),
        tune_config=tune.TuneConfig(
            metric=sweep.space.metric,
            mode=sweep.space.mode,
            scheduler=make_scheduler(sweep.space, sweep.base, shared=sweep.stage1 is not None),
            search_alg=make_search(sweep.search, max_concurrent=n, seed=sweep.base.train.seed),
            num_samples=sweep.samples,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(name=sweep.name, storage_path=sweep.storage, verbose=verbose,
                                  callbacks=list(callbacks)),
    )
    return tuner.fit()
