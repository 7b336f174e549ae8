"""The `dmdl` command: parses the arguments, sets up the console, dispatches to dmdl_dist/commands/, and is the
one place that turns an expected failure (dmdl_dist.errors.DmdlError) into a `dmdl <command>: error:` paragraph."""

from __future__ import annotations

import argparse
import sys
import textwrap

from dmdl_dist import __version__, commands

DESCRIPTION = """\
Train and use DMDL (Dual-level Modality Debiasing Learning) for unsupervised visible-infrared
person re-identification: no identity labels, pseudo-labels from clustering, on one CPU or GPU
(local mode) or on Ray Train workers (DDP or DeepSpeed) on one machine or a cluster."""

EPILOG = """\
examples:
  dmdl train --preset tiny                     a one-minute run on generated data (SynthVI)
  dmdl train --preset sysu --set data.root=/data/SYSU-MM01 --workers 4 --gpus-per-worker 1
  dmdl train --resume runs/NAME                continue an interrupted run
  dmdl eval --checkpoint runs/NAME/best.pt --dataset sysu --root /data/SYSU-MM01
  dmdl config --preset sysu                    the resolved config as YAML (--keys: every key explained)

`dmdl COMMAND --help` describes a command. A run's console shows its own lines, warnings and
errors; everything Ray, DeepSpeed, faiss and torch log goes to RUN_DIR/logs/ (--verbose: to the
console too). --debug shows the traceback of any error."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmdl", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dmdl {__version__}")
    _add_global_flags(parser, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in commands.modules():
        module.add_parsers(sub)
    for subparser in sub.choices.values():
        _add_global_flags(subparser, argparse.SUPPRESS)  # after the command as well as before it
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="every log line of Ray, DeepSpeed, faiss and torch on the console too")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of every error, expected or not")


def main(argv: list[str] | None = None) -> int:
    from dmdl_dist import logs
    from dmdl_dist.errors import DmdlError

    args = build_parser().parse_args(argv)
    args.verbose, args.debug = getattr(args, "verbose", False), getattr(args, "debug", False)
    logs.setup_console(verbose=args.verbose)
    handlers = {}
    for module in commands.modules():
        handlers.update(module.COMMANDS)
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print(f"dmdl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        user = err if isinstance(err, DmdlError) else _wrapped_user_error(err)
        if user is None or args.debug:
            raise  # a bug (or --debug): the traceback is what helps
        print(error_paragraph(args.command, user), file=sys.stderr)
        return getattr(user, "exit_code", 2)


def _wrapped_user_error(err: BaseException):
    """A DmdlError raised inside a Ray worker reaches the driver wrapped in Ray's errors."""
    if "ray" not in sys.modules:
        return None
    from dmdl_dist.distributed.launcher import unwrap_user_error

    return unwrap_user_error(err)


def error_paragraph(command: str, err: BaseException) -> str:
    """`dmdl <command>: error: <message>`, later lines of the message indented under the first."""
    first, *rest = str(err).strip().splitlines() or [type(err).__name__]
    return "\n".join([f"dmdl {command}: error: {first}", *(textwrap.indent(line, "  ") for line in rest)])


if __name__ == "__main__":
    sys.exit(main())
