"""`dmdl synth`: writes the embedded SynthVI data set."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the SynthVI data set (SYSU-MM01 layout)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--seed", type=int, default=0)


def cmd_synth(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dmdl_dist.data.synthvi import DEFAULT, TINY, generate

    base = {"default": DEFAULT, "tiny": TINY}[args.size]
    out = generate(args.out, replace(base, seed=args.seed))
    print(f"SynthVI ({args.size}, seed {args.seed}) at {out}")
    return 0


COMMANDS = {"synth": cmd_synth}
