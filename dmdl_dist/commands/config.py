"""`dmdl config`: the resolved config of a preset, file and overrides as YAML, or every key explained."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from dmdl_dist.commands.common import config_args


def add_parsers(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config as YAML, or every key with its meaning (--keys)",
                       description="Prints the config a run would use: the preset, then --config, then each --set "
                                   "(later layers win), as YAML that `dmdl train --config FILE` accepts. With "
                                   "--keys, lists every key with its type, default and meaning instead.")
    config_args(p)
    p.add_argument("--keys", action="store_true", help="list every key: type, default, meaning, allowed values")


def keys_text(width: int = 100) -> str:
    """One entry per schema key: `key (type, default D) [stage]`, then its meaning and choices, indented."""
    from dmdl_dist.config import BOTH, schema_keys

    out = []
    for info in schema_keys():
        stage = {1: "stage 1", 2: "stage 2", BOTH: "both stages", None: "run"}.get(info.stage, str(info.stage))
        out.append(f"{info.key} ({info.type}, default {json.dumps(info.default)}; acts in: {stage})")
        doc = info.doc + (f"; one of {', '.join(map(str, info.choices))}" if info.choices else "")
        out.append(textwrap.fill(doc, width, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(out)


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from dmdl_dist.config import load_config, to_dict

    if args.keys:
        print(keys_text())
        return 0
    cfg = load_config(args.preset, args.config, args.overrides)
    sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return 0


COMMANDS = {"config": cmd_config}
