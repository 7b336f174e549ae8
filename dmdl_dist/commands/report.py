"""`dmdl report RUN_DIR`: (re)writes a run's report.md, pictures and TensorBoard events."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.md: curves, ranked lists, modality gap, TensorBoard")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder written by dmdl train")
    p.add_argument("--no-model-pictures", action="store_true",
                   help="skip pictures that load the checkpoint and the data set (ranked lists)")


def cmd_report(args) -> int:
    from dmdl_dist.report.report import write_report

    path = write_report(args.run_dir, model_pictures=not args.no_model_pictures)
    print(f"wrote {path}")
    return 0


COMMANDS = {"report": cmd_report}
