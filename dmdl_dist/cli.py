"""The `dmdl` command: parses arguments and dispatches; the work lives in the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dmdl_dist import commands_model
from dmdl_dist.report import commands as report_commands
from dmdl_dist.tuning import commands as tuning_commands

DATASETS = ("sysu", "regdb", "llcm", "synthvi")


def _config_args(p: argparse.ArgumentParser) -> None:
    from dmdl_dist.config import PRESETS

    p.add_argument("--preset", choices=PRESETS, default=None, help="starting point (default: synthvi)")
    p.add_argument("--config", type=Path, default=None, help="YAML file applied on top of the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.lr=3e-4 (repeatable)")


def _protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", type=Path, required=True, help="data set root folder")
    p.add_argument("--mode", choices=("all", "indoor"), default=None, help="SYSU-MM01 search mode (default: both)")
    p.add_argument("--direction", choices=("v2i", "i2v"), default=None,
                   help="RegDB/LLCM: v2i visible query, i2v infrared query (default: both)")
    p.add_argument("--trials", type=int, default=10, help="gallery draws (SYSU-MM01, LLCM)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmdl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train DMDL (default: SynthVI, local mode)")
    _config_args(p)
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--out", type=Path, default=None, help="runs folder (default: run.out_dir, 'runs')")
    p.add_argument("--name", default=None, help="run name (default: preset and time)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray Train workers (default: dist.workers; 0 = local mode, one process, no Ray)")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Ray worker (default: dist.*)")

    p = sub.add_parser("synth", help="write the SynthVI data set (SYSU-MM01 layout)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("eval-features", help="run a data set's protocols on features you already have")
    _protocol_args(p)
    p.add_argument("--features", type=Path, required=True, help="Parquet file with columns path, feature")

    p = sub.add_parser("eval", help="extract features with a checkpoint and run the protocols")
    _protocol_args(p)
    p.add_argument("--checkpoint", type=Path, required=True)

    p = sub.add_parser("extract", help="write the features Parquet file that eval-features reads")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="test")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("ablate", help="baseline, +CAI, +CBT and full DMDL (plus floor and ceiling)")
    _config_args(p)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/ablate"))
    p.add_argument("--variants", nargs="+", default=None, help="subset of variants to run")

    report_commands.add_parsers(sub)
    commands_model.add_parsers(sub)
    tuning_commands.add_parsers(sub)
    return parser


def cmd_train(args) -> int:
    from dmdl_dist.config import ConfigError, load_config, load_run_config
    from dmdl_dist.engine.trainer import train

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
        from dmdl_dist.dist.launcher import launch  # the Ray Train path

        result = launch(cfg, run_dir, progress=not args.no_progress)
        if result.error is not None:
            raise result.error
        _print_run_results(run_dir, cfg.eval.trials)
        return 0
    train(cfg, run_dir, resume=args.resume is not None, progress=not args.no_progress)
    return 0


def _print_run_results(run_dir: Path, trials: int) -> None:
    from dmdl_dist.engine.trainer import results_text

    path = Path(run_dir) / "results.json"
    if path.is_file():
        print(results_text(json.loads(path.read_text()), trials))
    print(f"run folder: {run_dir}")


def cmd_synth(args) -> int:
    from dmdl_dist.data.synthvi import DEFAULT, TINY, generate

    base = {"default": DEFAULT, "tiny": TINY}[args.size]
    from dataclasses import replace

    out = generate(args.out, replace(base, seed=args.seed))
    print(f"SynthVI ({args.size}, seed {args.seed}) at {out}")
    return 0


def _print_results(results: dict, json_path: Path | None) -> None:
    from dmdl_dist.eval.protocols import format_table

    print(format_table(results))
    if json_path is not None:
        payload = results if len(results) > 1 else next(iter(results.values()))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(json_path)


def cmd_eval_features(args) -> int:
    from dmdl_dist.eval.run import evaluate_dataset, parquet_feature_fn

    results = evaluate_dataset(args.dataset, args.root, parquet_feature_fn(args.features),
                               mode=args.mode, direction=args.direction, trials=args.trials)
    _print_results(results, args.json)
    return 0


def cmd_eval(args) -> int:
    from dmdl_dist.engine.inference import checkpoint_feature_fn
    from dmdl_dist.eval.run import evaluate_dataset

    results = evaluate_dataset(args.dataset, args.root, checkpoint_feature_fn(args.checkpoint, args.root),
                               mode=args.mode, direction=args.direction, trials=args.trials)
    _print_results(results, args.json)
    return 0


def cmd_extract(args) -> int:
    from dmdl_dist.engine.inference import extract_to_parquet

    n = extract_to_parquet(args.checkpoint, args.dataset, args.root, args.split, args.out)
    print(f"wrote features of {n} images to {args.out}")
    return 0


def cmd_ablate(args) -> int:
    from dmdl_dist.config import load_config
    from dmdl_dist.engine.ablate import run_ablation

    base = load_config(args.preset, args.config, args.overrides)
    run_ablation(base, args.out, seeds=args.seeds, variants=args.variants)
    return 0


COMMANDS = {
    "train": cmd_train,
    "synth": cmd_synth,
    "eval-features": cmd_eval_features,
    "eval": cmd_eval,
    "extract": cmd_extract,
    "ablate": cmd_ablate,
    **report_commands.COMMANDS,
    **commands_model.COMMANDS,
    **tuning_commands.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    import logging

    from dmdl_dist.config import ConfigError
    from dmdl_dist.data.images import BadImagesError
    from dmdl_dist.engine.checkpoint import CheckpointError
    from dmdl_dist.eval.run import MissingFeaturesError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    user_errors = (ConfigError, FileNotFoundError, BadImagesError, MissingFeaturesError, CheckpointError,
                   *commands_model.user_errors())
    try:
        return COMMANDS[args.command](args)
    except user_errors as err:
        # Errors about the user's input: one clear line, no traceback. Anything else is a bug and shows one.
        print(f"dmdl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
