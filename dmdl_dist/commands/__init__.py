"""The handlers of the `dmdl` subcommands, one module per group; cli.py only parses and dispatches.

Every module offers the same two things: `add_parsers(sub)` adds its subcommands to the argparse
subparsers, and `COMMANDS` maps each subcommand to its handler (argparse.Namespace -> exit code).
Expected failures raise dmdl_dist.errors.DmdlError; cli.main prints them as one paragraph.
"""

from __future__ import annotations

import importlib
from types import ModuleType

GROUPS = ("train", "data", "evaluate", "serve", "report", "tune", "config")


def modules() -> list[ModuleType]:
    return [importlib.import_module(f"dmdl_dist.commands.{name}") for name in GROUPS]
