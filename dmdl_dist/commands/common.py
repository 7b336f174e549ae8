"""Argument groups that several subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path

DATASETS = ("sysu", "regdb", "llcm", "synthvi")


def config_args(p: argparse.ArgumentParser) -> None:
    """--preset, --config and repeatable --set: the layers of a run's config."""
    from dmdl_dist.config import PRESETS

    p.add_argument("--preset", choices=PRESETS, default=None, help="starting point (default: synthvi)")
    p.add_argument("--config", type=Path, default=None, help="YAML file applied on top of the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.lr=3e-4 (repeatable)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
