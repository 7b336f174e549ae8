"""`dmdl train` and `dmdl ablate`: training runs, local or on Ray Train, and the report each leaves."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dmdl_dist.commands.common import config_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train DMDL (default: SynthVI, local mode)")
    config_args(p)
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue an interrupted run")
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
    from dmdl_dist.config import ConfigError, load_config, load_run_config

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"dist.workers={args.workers}")
    if args.gpus_per_worker is not None:
        overrides.append(f"dist.gpus_per_worker={args.gpus_per_worker}")
    if args.resume is not None:
        cfg = load_run_config(args.resume, overrides)
        run_dir = args.resume
    else:
        cfg = load_config(args.preset, args.config, overrides)
        out = args.out or Path(cfg.run.out_dir)
        name = args.name or cfg.run.name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = out / name
        if (run_dir / "last.pt").exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick --name")
    if cfg.dist.workers > 0:
        from dmdl_dist.distributed.launcher import launch  # the Ray Train path

        launch(cfg, run_dir, progress=not args.no_progress, verbose=getattr(args, "verbose", False),
               address=args.address)
        print_run_results(run_dir, cfg.eval.trials)
        return 0
    from dmdl_dist.logs import FOLDER, log_file

    with log_file(run_dir / FOLDER, "train"):  # what the console leaves out (library INFO, warnings) is kept here
        train_local(cfg, run_dir, resume=args.resume is not None, progress=not args.no_progress)
    return 0


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


def user_errors() -> tuple[type[Exception], ...]:
    return ()
