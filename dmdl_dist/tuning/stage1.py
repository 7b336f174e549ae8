"""A sweep's shared stage 1: a space of stage-2 keys trains stage 1 once, not once per trial.

The config schema says which stage each key acts in (config.option's `stage`). When every
searched key acts in stage 2 (RUN keys change nothing that is trained), all trials are the same
run through stage 1: same config on every stage-1 key, same seed, and per-epoch seeding. So the
sweep trains that stage once (the base config with train.stage2_epochs=0) or takes one the user
trained (`--stage1 RUN_DIR|CKPT`), and every trial starts its stage 2 from that run's last.pt
(train.init_from: engine/trainer.py `warm_start` loads its weights, epoch counter and history,
and refuses a checkpoint trained with other stage-1 values).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from dmdl_dist.config import BOTH, Config, ConfigError, from_dict, key_stage, schema_keys, to_dict, validate
from dmdl_dist.engine import checkpoint as ckpt
from dmdl_dist.tuning.space import Dist, SearchSpace

STAGE1_DIR = "stage1"  # the shared run's folder in the sweep folder (and its Ray Train run name)
TRAINED_KEYS = (1, BOTH)  # key stages that act in stage 1: they must match the checkpoint's


@dataclass(frozen=True)
class SharedStage1:
    """The checkpoint every trial starts its stage 2 from."""

    path: str  # absolute: trials run in their own working directories
    epochs: int  # = train.stage1_epochs
    trained_here: bool  # False: given with --stage1, so the sweep trained no stage-1 epoch at all

    def record(self) -> dict:
        return {"path": self.path, "epochs": self.epochs, "trained_here": self.trained_here}


def stage1_keys(space: SearchSpace) -> list[str]:
    """The searched keys that act in stage 1 (stage 1 or both): with any, trials differ from epoch 1 on."""
    return [k for k in space.params if key_stage(k) in TRAINED_KEYS]


def shares_stage1(space: SearchSpace, base: Config) -> bool:
    """True when the trials of this space can start from one stage 1: every key acts in stage 2 (or is a RUN key)."""
    return (base.train.stage1_epochs > 0 and not stage1_keys(space)
            and any(key_stage(k) == 2 for k in space.params))


def check_shared_space(space: SearchSpace, base: Config, *, given: bool) -> None:
    """Refuses --stage1 for a space that touches stage 1, and a shared sweep with no stage-2 epoch to compare."""
    if given and not shares_stage1(space, base):
        touched = stage1_keys(space)
        why = (f"{space.source} searches {', '.join(touched)}, which act(s) in stage 1" if touched
               else "train.stage1_epochs is 0" if base.train.stage1_epochs == 0
               else f"{space.source} searches no stage-2 key")
        raise ConfigError(f"--stage1 is for a space whose keys all act in stage 2 only, but {why}; "
                          "drop --stage1 to run whole trials")
    if shares_stage1(space, base):
        d = space.params.get("train.stage2_epochs", base.train.stage2_epochs)
        fewest = min(d.candidates()) if isinstance(d, Dist) else int(d)
        if fewest < 1:
            raise ConfigError(f"{space.source} searches stage-2 keys only, but a trial can have train.stage2_epochs="
                              f"{fewest}: such a trial trains nothing it could be compared on; give stage 2 epochs")


def stage1_config(base: Config) -> Config:
    """The shared run: the base config without stage 2; no report (the trials' runs give those)."""
    cfg = copy.deepcopy(base)
    cfg.train.stage2_epochs = 0
    cfg.run.report = False
    cfg.eval.trials = 1  # the run ends with a test table; one gallery draw is enough for a run nobody selects
    validate(cfg)
    return cfg


def checkpoint_of(given: str | Path) -> Path:
    """--stage1 takes a run folder (its last.pt) or a checkpoint file."""
    path = Path(given).expanduser().resolve()
    if path.is_dir():
        path = path / ckpt.LAST
    if not path.is_file():
        raise ConfigError(f"--stage1 {given}: {path} does not exist; give a run folder holding {ckpt.LAST} or a "
                          "checkpoint file")
    return path


def differing_keys(ours: dict, theirs: dict, stages: tuple) -> list[str]:
    """Dotted keys of the given stages whose values differ between two config dicts."""
    out = []
    for info in schema_keys():
        if info.stage in stages:
            section, name = info.key.split(".")
            if ours[section][name] != theirs[section][name]:
                out.append(info.key)
    return out


def check_stage1(path: Path, base: Config) -> None:
    """Refuses a checkpoint that is not this base config's finished stage 1, naming what differs.

    The trials' warm start would refuse it too, but only after the Tuner launched them all.
    """
    saved = ckpt.load(path, map_location="cpu")
    if not isinstance(saved, dict) or not {"config", "state", "model"} <= set(saved):
        raise ConfigError(f"--stage1 {path} is not a run's checkpoint (last.pt) with its config and run state")
    epochs = int(saved["state"]["epoch"])
    want = base.train.stage1_epochs
    if epochs != want:
        raise ConfigError(f"--stage1 {path} has trained {epochs} epoch(s); this sweep's stage 1 is train.stage1_epochs="
                          f"{want}: give the last.pt of a run trained with train.stage2_epochs=0 and this config, or "
                          "leave --stage1 out and the sweep trains it")
    differ = differing_keys(to_dict(base), to_dict(from_dict(saved["config"])), TRAINED_KEYS)
    if differ:
        raise ConfigError(f"--stage1 {path} was trained with other values of {', '.join(differ)}, which act in stage "
                          "1: train it with the sweep's base config (--preset/--config/--set), or leave --stage1 out")


def finished(path: Path, base: Config) -> bool:
    """A resumed sweep keeps a stage 1 it already trained to the end."""
    if not path.is_file():
        return False
    return int(ckpt.load(path, map_location="cpu")["state"]["epoch"]) == base.train.stage1_epochs


def train_stage1(base: Config, run_dir: Path, *, storage_path: str) -> Path:
    """Trains the shared stage 1 as a Ray Train run (same launcher and workers as a trial); returns its last.pt.

    Run name and storage are fixed, so a sweep interrupted during stage 1 resumes it from Ray's
    latest checkpoint when fitted again.
    """
    from dmdl_dist.distributed.launcher import make_trainer

    last = run_dir / ckpt.LAST
    if not finished(last, base):
        result = make_trainer(stage1_config(base), run_dir, name=STAGE1_DIR, storage_path=storage_path).fit()
        if result.error is not None:
            raise result.error
    check_stage1(last, base)
    return last


def prepare_stage1(base: Config, folder: Path, *, storage_path: str, given: str | Path | None) -> SharedStage1:
    """The shared stage 1 of a sweep: the checkpoint given (checked), else one trained in folder/stage1."""
    if given is not None:
        path = checkpoint_of(given)
        check_stage1(path, base)
        return SharedStage1(str(path), base.train.stage1_epochs, trained_here=False)
    path = train_stage1(base, folder / STAGE1_DIR, storage_path=storage_path)
    return SharedStage1(str(path.resolve()), base.train.stage1_epochs, trained_here=True)


def epochs_saved(stage1: SharedStage1, trials_started: int) -> int:
    """Stage-1 epochs the trials did not train: each would have trained its own."""
    return trials_started * stage1.epochs - (stage1.epochs if stage1.trained_here else 0)
