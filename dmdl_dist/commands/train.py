"""`dmdl train` and `dmdl ablate`: training runs, local or on Ray Train, and the report each leaves."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from dmdl_dist.commands.common import config_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train DMDL (default: SynthVI, local mode)")
    config_args(p)
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--force-config", action="store_true",
                   help="with --resume: continue even though config.yaml or --set changes keys that act in training "
                        "(the differences are listed otherwise)")
    p.add_argument("--out", type=Path, default=None, help="runs folder (default: run.out_dir, 'runs')")
    p.add_argument("--name", default=None, help="run name (default: preset and time)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray Train workers (default: dist.workers; 0 = local mode, one process, no Ray)")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Ray worker (default: dist.*)")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="join this Ray cluster (default: dist.address, else RAY_ADDRESS, else start a private one)")

    p = sub.add_parser("ablate", help="baseline, +CAI, +CBT and full DMDL (plus floor and ceiling)")
    config_args(p)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/ablate"))
    p.add_argument("--variants", nargs="+", default=None, help="subset of variants to run")


def write_run_report(run_dir: Path, cfg) -> None:
    """The run's report.md, when the config asks for one (run.report)."""
    if cfg.run.report:
        from dmdl_dist.report.report import write_report

        print(f"report: {write_report(run_dir)}")


def train_local(cfg, run_dir: Path, *, resume: bool = False, progress: bool = True, **kwargs) -> dict:
    """Local mode: trains in this process, then writes the report of a finished run."""
    from dmdl_dist.engine.trainer import train

    results = train(cfg, run_dir, resume=resume, progress=progress, **kwargs)
    if "test" in results:
        write_run_report(Path(run_dir), cfg)
    return results


def cmd_train(args: argparse.Namespace) -> int:
    from dmdl_dist.config import ConfigError, load_config
    from dmdl_dist.engine.atomic import remove_orphans

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"dist.workers={args.workers}")
    if args.gpus_per_worker is not None:
        overrides.append(f"dist.gpus_per_worker={args.gpus_per_worker}")
    if args.force_config and args.resume is None:
        raise ConfigError("--force-config goes with --resume RUN_DIR")
    if args.resume is not None:
        run_dir, cfg = args.resume, None  # its config is read under the lock: a running run may rewrite it
    else:
        cfg = load_config(args.preset, args.config, overrides)
        out = args.out or Path(cfg.run.out_dir)
        name = args.name or cfg.run.name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = out / name
        if (run_dir / "last.pt").exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick --name")
        require_extras(cfg)
    with run_folder(run_dir):
        if cfg is None:
            cfg = resume_config(run_dir, overrides, force=args.force_config)
            require_extras(cfg)
        removed = remove_orphans(run_dir, every=True)  # the lock is ours: no other writer is at work here
        if removed:
            print(f"removed {len(removed)} temporary file(s) of interrupted writes in {run_dir}", file=sys.stderr)
        if args.force_config:
            from dmdl_dist.config import save_config

            save_config(cfg, run_dir / "config.yaml")  # what the run trains with from now on
        if cfg.dist.workers > 0:
            from dmdl_dist.distributed.launcher import launch  # the Ray Train path; the driver holds the lock

            launch(cfg, run_dir, progress=not args.no_progress, verbose=getattr(args, "verbose", False),
                   address=args.address)
        else:
            from dmdl_dist.logs import FOLDER, log_file

            with log_file(run_dir / FOLDER, "train"):  # what the console leaves out is kept here
                train_local(cfg, run_dir, resume=args.resume is not None, progress=not args.no_progress)
            return 0
    print_run_results(run_dir, cfg.eval.trials)
    return 0


def resume_config(run_dir: Path, overrides: list[str], *, force: bool = False):
    """The config a --resume continues with: config.yaml and the overrides, checked against the checkpoint's.

    A folder with a config but no checkpoint is said to start over; keys that act in training may
    differ from the checkpoint's only with `force`, and never those that change the network's weights.
    """
    from dmdl_dist.config import describe_differences, differing_keys, load_run_config, to_dict
    from dmdl_dist.engine import checkpoint as ckpt

    last = Path(run_dir) / ckpt.LAST
    if not last.is_file():
        cfg = load_run_config(run_dir, overrides)
        print(f"dmdl train: {run_dir} has a config.yaml but no checkpoint ({ckpt.LAST}): no epoch of it finished, "
              "so it starts from epoch 1", file=sys.stderr)
        return cfg
    saved = ckpt.load(last, mmap=True)  # the config only: the tensors are mapped, not read
    theirs = saved.get("config")
    if not isinstance(theirs, dict):
        raise ckpt.CheckpointError(f"checkpoint {last} holds no config; it is not a dmdl_dist checkpoint")
    cfg = load_run_config(run_dir, overrides, checkpoint_config=theirs, force=force)
    differ = differing_keys(theirs, to_dict(cfg))
    network = [f"{key}={new!r}" for key, _, new in differ if key in NETWORK_KEYS]
    if network:
        raise ckpt.CheckpointError(
            f"checkpoint {last} holds a network of {ckpt.describe_model(theirs)}; its weights cannot continue as "
            f"{', '.join(network)} (--force-config cannot change that): start a new run instead")
    if differ:
        print(f"dmdl train: --force-config: {run_dir} continues with {describe_differences(differ)}", file=sys.stderr)
    return cfg


NETWORK_KEYS = ("model.arch", "model.non_local")  # keys that change the shapes of the network's weights


def require_extras(cfg) -> None:
    """The optional packages this config asks for, checked before any work (data, model, Ray)."""
    if cfg.cluster.knn_backend == "faiss":
        from dmdl_dist.extras import require_faiss

        require_faiss("cluster.knn_backend=faiss")


@contextmanager
def run_folder(run_dir: Path):
    """The run folder for one run: locked against a second run, and removed again when this run created it
    and fails before its first epoch (no empty folder is left behind)."""
    from dmdl_dist.engine import checkpoint as ckpt
    from dmdl_dist.engine.run_lock import run_lock

    run_dir = Path(run_dir)
    created, locked = not run_dir.exists(), False
    try:
        with run_lock(run_dir):
            locked = True  # from here on the folder is this run's (a refused lock leaves it alone)
            yield run_dir
    except BaseException:
        if locked and created and not (run_dir / ckpt.LAST).exists() and not (run_dir / "metrics.jsonl").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def print_run_results(run_dir: Path, trials: int) -> None:
    from dmdl_dist.engine.trainer import results_text

    path = Path(run_dir) / "results.json"
    if path.is_file():
        print(results_text(json.loads(path.read_text()), trials))
    report = Path(run_dir) / "report.md"
    print(f"report: {report}" if report.is_file() else f"run folder: {run_dir}")


def ablate(base, out: Path, *, seeds: int = 1, variants: list[str] | None = None, echo=print):
    """Runs the ablation (engine/ablate.py), a report per trained run, and the table's report."""
    from dmdl_dist.engine.ablate import VARIANTS, run_ablation
    from dmdl_dist.report.report import write_report, write_table_report

    def report(run_dir: Path, cfg) -> None:
        if cfg.run.report:
            write_report(run_dir)

    table = run_ablation(base, out, seeds=seeds, variants=variants, echo=echo, after_run=report)
    names = variants or list(VARIANTS)
    variants_md = "\n".join(f"- {n}: `{VARIANTS[n]}`" for n in names)
    write_table_report("DMDL ablation", (Path(out) / "ablation.md").read_text(), out,
                       {"Variants (overrides on the base config)": variants_md})
    return table


def cmd_ablate(args: argparse.Namespace) -> int:
    from dmdl_dist.config import load_config

    ablate(load_config(args.preset, args.config, args.overrides), args.out, seeds=args.seeds, variants=args.variants)
    return 0


COMMANDS = {"train": cmd_train, "ablate": cmd_ablate}
