"""The DMDL training run: stage 1 (intra-modality) then stage 2 (cross-modality), one refresh per epoch.

`train` is the per-worker function: local mode calls it directly; the Ray Train launcher runs
the same function in every worker. Everything it needs comes from its arguments.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dmdl_dist.config import BOTH, Config, ConfigError, from_dict, save_config, schema_keys, to_dict, total_epochs
from dmdl_dist.data.manifest import INFRARED, VISIBLE, columns
from dmdl_dist.distributed import comm
from dmdl_dist.distributed.backend import Engine, build_engine
from dmdl_dist.distributed.session import LocalSession, rewrite_records
from dmdl_dist.engine import checkpoint as ckpt
from dmdl_dist.engine.atomic import write_text
from dmdl_dist.engine.data import RunData, cache_images, load_run_data
from dmdl_dist.engine.epoch import EpochPlan, loader_workers, train_one_epoch
from dmdl_dist.engine.extract import extract_features
from dmdl_dist.engine.recluster import Refresh, refresh
from dmdl_dist.engine.schedule import joint_sampling, lr_at, stage_of, step_settings
from dmdl_dist.engine.snapshot import gap_snapshot, save_snapshot
from dmdl_dist.errors import DmdlError
from dmdl_dist.eval.protocols import format_table
from dmdl_dist.eval.run import evaluate_manifest
from dmdl_dist.logs import DRIVER_SHOWS
from dmdl_dist.memory.io import save_memory_shards
from dmdl_dist.models.backbone import build_model

log = logging.getLogger("dmdl_dist")
MODALITIES = (VISIBLE, INFRARED)


class DegenerateClusteringError(DmdlError):
    """The clustering stayed degenerate (one giant cluster, or all outliers) for too many epochs."""


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run, counted over both stages
    best_val: float = -1.0
    best_epoch: int = -1
    degenerate_epochs: int = 0  # epochs in a row whose clustering was degenerate
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate_split(model, data: RunData, manifest, cfg: Config, device, *, trials: int, flip: bool = True) -> dict:
    feats = extract_features(
        model, data.root, list(columns(manifest)["path"]), height=cfg.data.height, width=cfg.data.width,
        device=device, batch_size=cfg.train.eval_batch_size, workers=loader_workers(cfg), flip=flip,
    )
    mode = cfg.eval.mode if cfg.data.dataset in ("sysu", "synthvi") else None
    return evaluate_manifest(cfg.data.dataset, manifest, feats, mode=mode, trials=trials)


def _epoch_line(rec: dict, total_epochs: int) -> str:
    losses = " ".join(f"{k} {v:.3f}" for k, v in rec["losses"].items())
    line = (
        f"epoch {rec['epoch']:>3}/{total_epochs} [stage {rec['stage']}] {losses} | clusters V {rec['clusters'][0]} "
        f"I {rec['clusters'][1]} outliers V {rec['outliers'][0]:.0%} I {rec['outliers'][1]:.0%}"
    )
    if rec["stage"] == 2:
        line += (f" anchor {'VI'[rec['anchor']]} shared {rec['num_shared']} assoc {rec['association_rate']:.0%}"
                 f" conf V {rec['confidence'][0]:.2f} I {rec['confidence'][1]:.2f}")
    line += f" | refresh {rec['time']['refresh']:.1f}s train {rec['time']['train']:.1f}s"
    if "val_mAP" in rec:
        line += f" | val R1 {rec['val_rank1']:.1f} mAP {rec['val_mAP']:.1f}"
    if rec.get("degenerate"):
        line += f" | WARNING degenerate clustering ({rec['degenerate_epochs']} epoch(s) in a row)"
    return line


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    echo=print,
    session: LocalSession | None = None,
) -> dict:
    """The per-worker function: trains, checkpoints every epoch, evaluates the selected model; returns the results.

    Local mode calls it directly (world size 1); the Ray launcher calls it in every worker with
    a RaySession. Model selection never reads the test set: the epoch with the best validation
    mAP on held-out training identities when data.holdout_val is set, else the last epoch.
    `stop_after` ends the run after that many epochs in total, as an interruption would. The
    results (also in RUN_DIR/results.json) go back to the caller, which writes the report.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    session = session or LocalSession(run_dir, resume=resume)
    main = comm.is_main()
    progress = progress and main
    echo = echo if main else silent
    device = session.device(cfg.train.device)
    seed_everything(cfg.train.seed)
    data = load_run_data(cfg, run_dir)
    model = build_model(
        cfg.model.arch, pretrained=cfg.model.pretrained, last_stride=cfg.model.last_stride,
        non_local=cfg.model.non_local, gem_p=cfg.model.gem_p,
    ).to(device)
    state = TrainState()
    saved, saved_files = session.load(device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        state = TrainState(**saved["state"])
        echo(f"resumed {run_dir} at epoch {state.epoch + 1}")
    else:
        if cfg.train.init_from:
            state = warm_start(model, cfg, device)
            echo(f"starting at epoch {state.epoch + 1} from {cfg.train.init_from}")
        if main:
            save_config(cfg, run_dir / "config.yaml")
            rewrite_records(run_dir, state.history)  # a warm start's inherited epochs, marked as such
    engine = build_engine(model, device, cfg)
    if saved is not None:
        engine.load_optimizer(saved.get("optimizer"), saved_files)
    echo(f"training on {device} x {comm.world_size()} ({cfg.dist.backend if comm.world_size() > 1 else 'local'}, "
         f"{engine.precision}): {len(data.train_paths[0])} visible + "
         f"{len(data.train_paths[1])} infrared images, {total_epochs(cfg)} epochs -> {run_dir}")

    if main and state.epoch == 0 and cfg.run.report:
        _snapshot(model, data, cfg, device, run_dir, "untrained")
    if state.epoch < total_epochs(cfg):
        cache_images(cfg, data, progress=progress)
    while state.epoch < total_epochs(cfg):
        epoch = state.epoch
        stage, in_stage = stage_of(epoch, cfg)
        if in_stage == 0 and epoch > 0:
            engine.reset_optimizer()  # stage 2 starts afresh, as the two-stage recipe does
        seed_everything(cfg.train.seed * 1000 + epoch)  # per-epoch seeding: a resumed run repeats exactly
        engine.set_lr(lr_at(cfg, in_stage, comm.world_size()))
        t0 = time.perf_counter()
        ref = refresh(model, str(data.root), data.train_paths, data.train_pids, cfg, stage=stage,
                      epoch_in_stage=in_stage, device=device, progress=progress, caches=data.train_images)
        state.degenerate_epochs = state.degenerate_epochs + 1 if ref.degenerate else 0
        if state.degenerate_epochs >= cfg.cluster.max_degenerate_epochs:
            raise DegenerateClusteringError(_degenerate_advice(cfg, ref, state.degenerate_epochs))
        if ref.degenerate and main:  # under Ray the driver prints it, from the epoch's metrics (progress.py)
            log.warning(degenerate_warning(epoch + 1, "; ".join(ref.degenerate), cfg), extra={DRIVER_SHOWS: True})
        t1 = time.perf_counter()
        plan = EpochPlan(stage, epoch, step_settings(cfg, stage, in_stage), joint_sampling(cfg, stage, in_stage))
        if any(not (lab >= 0).any() for lab in (ref.labels.train_labels(m) for m in MODALITIES)):
            losses, steps = {}, {}  # a modality without a single cluster: nothing to train this epoch
        else:
            losses, steps = train_one_epoch(engine, data, ref, cfg, plan, device=device, progress=progress)
        t2 = time.perf_counter()
        rec = _record(cfg, ref, losses, steps, epoch, stage, t0, t1, t2)
        rec["degenerate_epochs"] = state.degenerate_epochs
        if data.val is not None:
            val = comm.broadcast_object(
                evaluate_split(model, data, data.val, cfg, device, trials=1, flip=False) if main else None
            )
            first = next(iter(val.values()))["mean"]
            rec["val_rank1"], rec["val_mAP"] = first["rank1"], first["mAP"]
            rec["time"]["val"] = time.perf_counter() - t2
            if first["mAP"] > state.best_val:
                state.best_val, state.best_epoch = first["mAP"], epoch + 1
                if main:
                    ckpt.save_atomic({"model": ckpt.model_state(model), "epoch": epoch + 1, "config": to_dict(cfg)},
                                     run_dir / ckpt.BEST)
        state.history.append(rec)
        state.epoch = epoch + 1
        session.save_epoch(
            {"model": ckpt.model_state(model), "optimizer": engine.optimizer_state(), "state": state.__dict__,
             "config": to_dict(cfg)},
            rec,
            functools.partial(_save_rank_files, engine, ref),
        )
        echo(_epoch_line(rec, total_epochs(cfg)))
        if main and cfg.run.report and state.epoch in (cfg.train.stage1_epochs, total_epochs(cfg)):
            name = "stage1" if state.epoch == cfg.train.stage1_epochs else "stage2"
            _snapshot(model, data, cfg, device, run_dir, name)
        if stop_after is not None and state.epoch >= stop_after and state.epoch < total_epochs(cfg):
            echo(f"stopped after epoch {state.epoch}; continue with: dmdl train --resume {run_dir}")
            return {"stopped_at": state.epoch}

    results = final_evaluation(model, data, cfg, state, run_dir, device, echo) if main else None
    return comm.broadcast_object(results)


def warm_start(model: torch.nn.Module, cfg: Config, device: torch.device) -> TrainState:
    """Loads train.init_from (e.g. a shared stage-1 checkpoint): its weights, epoch counter and history.

    The run continues from that epoch with its own config, which must equal the checkpoint's on every
    key that acts in the epochs already trained (stage 1 or both), or the result would be another run's.
    """
    saved = ckpt.load(Path(cfg.train.init_from), map_location=device)
    theirs = from_dict(saved["config"])
    state = TrainState(**saved["state"])
    stages = (1, BOTH) if state.epoch <= cfg.train.stage1_epochs else (1, 2, BOTH)
    ours_flat, theirs_flat = to_dict(cfg), to_dict(theirs)
    differ = [info.key for info in schema_keys() if info.stage in stages
              and ours_flat[info.key.split(".")[0]][info.key.split(".")[1]]
              != theirs_flat[info.key.split(".")[0]][info.key.split(".")[1]]]
    if differ:
        raise ConfigError(f"train.init_from={cfg.train.init_from} was trained with other values of {differ}, which "
                          f"act in its {state.epoch} epochs; start from a checkpoint trained with this config")
    if state.epoch > total_epochs(cfg):
        raise ConfigError(f"train.init_from={cfg.train.init_from} has trained {state.epoch} epochs, more than this "
                          f"run's {total_epochs(cfg)}")
    model.load_state_dict(saved["model"])
    for rec in state.history:  # the run's records begin with these epochs, which another run trained
        rec.setdefault("inherited", str(cfg.train.init_from))
    return state


def _save_rank_files(engine: Engine, ref: Refresh, folder: Path) -> None:
    """What each rank writes into the epoch's checkpoint: its memory shards and its optimizer partition."""
    save_memory_shards(ref.memories, folder)
    engine.save_rank_files(folder)


def _snapshot(model, data: RunData, cfg: Config, device, run_dir: Path, name: str) -> None:
    """Test features of a few identities for the modality-gap picture (report/gap.py)."""
    save_snapshot(gap_snapshot(model, data.root, data.test, cfg, device), run_dir / "gap" / f"{name}.npz")


def silent(*_args, **_kwargs) -> None:
    """An echo that prints nothing (ranks other than 0, Ray workers)."""


def degenerate_warning(epoch: int, problems: str, cfg: Config) -> str:
    return f"epoch {epoch}: degenerate clustering ({problems}); training on it learns little. {_degenerate_fix(cfg)}"


def _degenerate_fix(cfg: Config) -> str:
    return (f"One giant cluster: lower cluster.eps (now {cfg.cluster.eps}) or cluster.k1 (now {cfg.cluster.k1}); "
            f"every sample an outlier: raise cluster.eps or lower cluster.min_samples (now {cfg.cluster.min_samples})")


def _degenerate_advice(cfg: Config, ref: Refresh, epochs: int) -> str:
    problems = "; ".join(ref.degenerate)
    return (f"the clustering has been degenerate for {epochs} epochs in a row ({problems}), so training learns "
            f"nothing useful. {_degenerate_fix(cfg)}. cluster.max_degenerate_epochs (now "
            f"{cfg.cluster.max_degenerate_epochs}) sets how long this is tolerated.")


def _record(cfg: Config, ref: Refresh, losses: dict, steps: dict, epoch: int, stage: int, t0: float, t1: float,
            t2: float) -> dict:
    """One metrics.jsonl record; plain Python types only (checkpoints load with weights_only=True)."""
    views = 2 if cfg.cbt.augment else 1
    batch = cfg.data.num_pids * cfg.data.num_instances * (comm.world_size() if cfg.dist.batch == "per_worker" else 1)
    images = cfg.train.iters_per_epoch * 2 * batch * views if losses else 0
    labels = ref.labels
    rec = {
        "epoch": epoch + 1, "stage": stage, "losses": losses, "step_losses": steps,
        "clusters": [int(c) for c in labels.num_clusters],
        "outliers": [labels.outlier_fraction(m) for m in MODALITIES],
        "k1": [int(k) for k in labels.k1],
        "labels_digest": labels.digest(),
        "confidence": [float(c[labels.train_labels(m) >= 0].mean()) if (labels.train_labels(m) >= 0).any() else 0.0
                       for m, c in enumerate(ref.confidence)],
        "time": {"refresh": t1 - t0, "train": t2 - t1, **{f"refresh_{k}": v for k, v in ref.timings.items()}},
        "images_per_s": images / max(t2 - t1, 1e-9),
        "images_per_s_per_worker": images / max(t2 - t1, 1e-9) / comm.world_size(),
        "workers": comm.world_size(),
    }
    if stage == 2:
        rec.update({"anchor": int(labels.anchor), "num_shared": int(labels.num_shared),
                    "association_rate": labels.association_rate(), "matching": labels.matching})
    if ref.degenerate:
        rec["degenerate"] = list(ref.degenerate)
    return rec


def final_evaluation(model, data: RunData, cfg: Config, state: TrainState, run_dir: Path, device, echo) -> dict:
    selected = "last"
    if state.best_epoch > 0 and (run_dir / ckpt.BEST).is_file():
        model.load_state_dict(ckpt.load(run_dir / ckpt.BEST, map_location=device)["model"])
        selected = f"best val mAP (epoch {state.best_epoch})"
    t0 = time.perf_counter()
    test = evaluate_split(model, data, data.test, cfg, device, trials=cfg.eval.trials, flip=True)
    results = {
        "time": {"test": time.perf_counter() - t0},
        "selected": selected,
        "epochs": state.epoch,
        "test": test,
        "best_val_mAP": state.best_val if state.best_epoch > 0 else None,
    }
    write_text(run_dir / "results.json", json.dumps(results, indent=2))
    echo(results_text(results, cfg.eval.trials))
    return results


def results_text(results: dict, trials: int) -> str:
    """The closing lines of a run: which model was chosen and its test table."""
    return f"\nmodel: {results['selected']}; test protocols ({trials} gallery trials):\n{format_table(results['test'])}"

