"""`--confirm-seeds N`: the sweep's best config trained again with N other seeds, whole runs.

The winner's number is the best of many draws on one seed, so it flatters the winner. The
confirmation trains the winning config from scratch (stage 1 included: the seed acts there too)
with seeds the sweep did not use, and gives their mean +- std beside the sweep's single number.
The runs are a second Tune experiment in <sweep>/confirm, so they share the cluster like trials.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from dmdl_dist.config import from_dict
from dmdl_dist.tuning.results import TrialRecord, records_from_grid, trial_value

CONFIRM_DIR = "confirm"


@dataclass
class Confirmation:
    """The confirmation runs of the best trial's config: one value of the sweep metric per seed."""

    metric: str
    rank: str  # "final" or "best": which epoch's value, as the sweep ranked
    sweep_value: float  # the best trial's value in the sweep
    sweep_seed: int
    seeds: list[int]
    values: list[float | None]  # per seed; None when that run failed or reported nothing
    errors: list[str]

    @property
    def scored(self) -> list[float]:
        return [v for v in self.values if v is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scored) if self.scored else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); 0 for a single run."""
        return statistics.stdev(self.scored) if len(self.scored) > 1 else (0.0 if self.scored else None)

    def line(self) -> str:
        """One sentence for summary.md and the terminal."""
        head = (f"{self.rank} {self.metric} {self.sweep_value:.2f} in the sweep (seed {self.sweep_seed}); "
                f"trained again with seeds {', '.join(map(str, self.seeds))}: ")
        if self.mean is None:
            return head + "no run reported it" + (f" ({'; '.join(self.errors)})" if self.errors else "")
        each = ", ".join("-" if v is None else f"{v:.2f}" for v in self.values)
        return head + f"{self.mean:.2f} +- {self.std:.2f} (mean +- std of {len(self.scored)} run(s): {each})"


def confirm_seeds(base: dict, params: dict, *, n: int, folder: Path, experiment: str, metric: str, mode: str,
                  rank: str, sweep_value: float, max_concurrent: int) -> Confirmation:
    """Trains base + params with seeds seed+1 .. seed+n (whole runs) and collects their metric.

    A confirmation interrupted earlier (same folder) is continued, not started over.
    """
    from ray import tune

    from dmdl_dist.tuning.search import make_search
    from dmdl_dist.tuning.sweep import trainable, trial_dirname

    cfg = from_dict(base)
    sweep_seed = int(params.get("train.seed", cfg.train.seed))
    seeds = [sweep_seed + i for i in range(1, n + 1)]
    local = folder / CONFIRM_DIR
    runs = trainable(cfg, local, f"{experiment}/{CONFIRM_DIR}")
    path = f"{experiment}/{CONFIRM_DIR}"
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, runs, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            runs,
            param_space={**params, "train.seed": tune.grid_search(seeds)},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, trial_dirname_creator=trial_dirname,
                                        search_alg=make_search("random", max_concurrent=max_concurrent, seed=0)),
            run_config=tune.RunConfig(name=CONFIRM_DIR, storage_path=experiment, verbose=1),
        )
    records = records_from_grid(tuner.fit(), local / "runs")
    return collect(records, seeds, metric=metric, mode=mode, rank=rank, sweep_value=sweep_value,
                   sweep_seed=sweep_seed)


def collect(records: list[TrialRecord], seeds: list[int], *, metric: str, mode: str, rank: str, sweep_value: float,
            sweep_seed: int) -> Confirmation:
    """The confirmation runs' records -> one value per seed, in seed order."""
    by_seed = {int(r.params["train.seed"]): r for r in records if "train.seed" in r.params}
    values, errors = [], []
    for seed in seeds:
        rec = by_seed.get(seed)
        value = trial_value(rec.history, metric, mode, rank) if rec else None
        values.append(value if value is None or math.isfinite(value) else None)
        if rec is not None and rec.error:
            errors.append(f"seed {seed}: {rec.error}")
    return Confirmation(metric, rank, sweep_value, sweep_seed, seeds, values, errors)
