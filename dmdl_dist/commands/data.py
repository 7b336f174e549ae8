"""`dmdl synth`: writes the embedded SynthVI data set, and measures the cues it carries."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the SynthVI data set (SYSU-MM01 layout); --stats measures its cues")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bias", type=float, default=None,
                   help="modality bias in [0, 1]: how little of the infrared heat follows the visible colour (0: all "
                   "of it, 1: none; default 0.8)")
    p.add_argument("--stats", action="store_true",
                   help="then print how well a colour histogram and a shape descriptor retrieve within and across "
                   "modalities on the test ids, and which shared cues (patterns, sleeves, bags, ...) their wrong "
                   "cross-modality matches agree on")
    p.add_argument("--checkpoint", type=Path, action="append", default=[], metavar="CKPT",
                   help="with --stats: a trained checkpoint's features measured the same way (repeatable)")


def cmd_synth(args: argparse.Namespace) -> int:
    from dmdl_dist.config import ConfigError
    from dmdl_dist.data.synthvi import generate, sized

    if args.checkpoint and not args.stats:
        raise ConfigError("--checkpoint is measured by --stats; add --stats")
    missing = [str(p) for p in args.checkpoint if not p.is_file()]
    if missing:
        raise ConfigError(f"--checkpoint: no such file: {', '.join(missing)} (a run folder's best.pt or last.pt)")
    if args.bias is not None and not 0 <= args.bias <= 1:
        raise ConfigError(f"--bias {args.bias} is outside [0, 1]; 0: infrared heat follows visible colour, "
                          "1: independent of it")
    base = sized(args.size, seed=args.seed, bias=args.bias)
    out = generate(args.out, base)
    print(f"SynthVI ({args.size}, seed {args.seed}, bias {base.bias:g}) at {out}")
    if args.stats:
        from dmdl_dist.data.synthvi.cues import format_cue_table
        from dmdl_dist.data.synthvi.stats import cue_use, directions, format_stats, model_names, test_features

        features = test_features(out, args.checkpoint)  # once, for both tables
        print(format_stats(directions(features)))
        for name, path in zip(model_names(len(args.checkpoint)), args.checkpoint, strict=True):
            print(f"{name}: {path}")
        print()
        print(format_cue_table(*cue_use(out, features)))
    return 0


COMMANDS = {"synth": cmd_synth}
