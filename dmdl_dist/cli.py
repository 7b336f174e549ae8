"""The `dmdl` command: parses the arguments and dispatches to the handlers in dmdl_dist/commands/."""

from __future__ import annotations

import argparse
import sys

from dmdl_dist import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmdl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in commands.modules():
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    from dmdl_dist.config import ConfigError
    from dmdl_dist.data.images import BadImagesError
    from dmdl_dist.engine.checkpoint import CheckpointError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    handlers, user_errors = {}, [ConfigError, FileNotFoundError, BadImagesError, CheckpointError]
    for module in commands.modules():
        handlers.update(module.COMMANDS)
        user_errors += module.user_errors()
    try:
        return handlers[args.command](args)
    except tuple(user_errors) as err:
        # Errors about the user's input: one clear line, no traceback. Anything else is a bug and shows one.
        print(f"dmdl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
