"""`dmdl eval`, `dmdl eval-features` and `dmdl extract`: the data sets' protocols on a model or on features."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmdl_dist.commands.common import DATASETS


def _protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", type=Path, required=True, help="data set root folder")
    p.add_argument("--mode", choices=("all", "indoor"), default=None, help="SYSU-MM01 search mode (default: both)")
    p.add_argument("--direction", choices=("v2i", "i2v"), default=None,
                   help="RegDB/LLCM: v2i visible query, i2v infrared query (default: both)")
    p.add_argument("--trials", type=int, default=10, help="gallery draws (SYSU-MM01, LLCM)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")


def add_parsers(sub: argparse._SubParsersAction) -> None:
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


def _print_results(results: dict, json_path: Path | None) -> None:
    from dmdl_dist.engine.atomic import write_text
    from dmdl_dist.eval.protocols import format_table

    print(format_table(results))
    if json_path is not None:
        payload = results if len(results) > 1 else next(iter(results.values()))
        write_text(json_path, json.dumps(payload, indent=2))


def _check_outputs(*paths: Path | None) -> None:
    """Output files that could not be written fail now, before any features are read or extracted."""
    from dmdl_dist.engine.atomic import ensure_writable

    for path in paths:
        if path is not None:
            ensure_writable(path)


def cmd_eval_features(args: argparse.Namespace) -> int:
    from dmdl_dist.eval.run import evaluate_dataset, parquet_feature_fn

    _check_outputs(args.json)
    results = evaluate_dataset(args.dataset, args.root, parquet_feature_fn(args.features),
                               mode=args.mode, direction=args.direction, trials=args.trials)
    _print_results(results, args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dmdl_dist.eval.run import evaluate_dataset
    from dmdl_dist.serve.inference import checkpoint_feature_fn

    _check_outputs(args.json)
    results = evaluate_dataset(args.dataset, args.root, checkpoint_feature_fn(args.checkpoint, args.root),
                               mode=args.mode, direction=args.direction, trials=args.trials)
    _print_results(results, args.json)
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from dmdl_dist.serve.inference import extract_to_parquet

    _check_outputs(args.out)
    n = extract_to_parquet(args.checkpoint, args.dataset, args.root, args.split, args.out)
    print(f"wrote features of {n} images to {args.out}")
    return 0


COMMANDS = {"eval-features": cmd_eval_features, "eval": cmd_eval, "extract": cmd_extract}
