"""Where a process's log records go: our lines and real warnings to the console, everything to RUN_DIR/logs/.

Routing is by logger name and level, never by hiding a stream: whatever a process writes to its
stderr without logging (a traceback, a crash, a C++ assertion) still reaches the console, and
Python warnings become log records of 'py.warnings' that the console shows. Libraries that log
about themselves at INFO or WARNING (Ray's life cycle, DeepSpeed's accelerator detection,
faiss's loader fall-backs, torch's CUDA probing) show only their errors on the console; their
every record is in the log file. `verbose` puts every record on the console again.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

OURS = "dmdl_dist"
FOLDER = "logs"  # RUN_DIR/logs/
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d]: %(message)s"

# Console thresholds of libraries whose INFO and WARNING records are about the library, not the run.
QUIET = {"ray": logging.ERROR, "DeepSpeed": logging.ERROR, "deepspeed": logging.ERROR, "faiss": logging.ERROR,
         "torch": logging.ERROR}


def console_threshold(name: str, verbose: bool = False) -> int:
    """The lowest level of a record of logger `name` that the console shows."""
    if verbose:
        return logging.DEBUG
    if _under(name, OURS):
        return logging.INFO
    return next((level for prefix, level in QUIET.items() if _under(name, prefix)), logging.WARNING)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class ConsoleFilter(logging.Filter):
    """Passes records at or above their logger's console threshold, except a record logged about an exception
    that `explained(exception)` says someone else explains in its own words (the record stays in the file)."""

    def __init__(self, verbose: bool = False, explained: Callable[[BaseException], bool] | None = None):
        super().__init__()
        self.verbose = verbose
        self.explained = explained

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < console_threshold(record.name, self.verbose):
            return False
        if self.explained is None or self.verbose:
            return True
        # the exception logged, or the one being handled while logging (Ray Train logs tracebacks as text)
        err = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return err is None or not self.explained(err)


class ConsoleFormatter(logging.Formatter):
    """Our records as bare lines; anyone else's named, so a reader knows whose warning it is."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if _under(record.name, OURS) else f"{record.name}: {record.levelname.lower()}: {text}"


def setup_console(verbose: bool = False) -> None:
    """The CLI's console: one stderr handler on the root logger, filtered by ConsoleFilter."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "dmdl_console", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.dmdl_console = True
    handler.setFormatter(ConsoleFormatter("%(message)s"))
    handler.addFilter(ConsoleFilter(verbose))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)


@contextmanager
def log_file(folder: str | Path, name: str) -> Iterator[Path]:
    """Every record of this process, while the block runs, also goes to folder/name.log (appended)."""
    path = _file_handler(folder, name)
    try:
        yield path
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "dmdl_file", None) == path]:
            root.removeHandler(handler)
            handler.close()


def _file_handler(folder: str | Path, name: str) -> Path:
    path = (Path(folder) / f"{name}.log").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if not any(getattr(h, "dmdl_file", None) == path for h in root.handlers):
        handler = logging.FileHandler(path)
        handler.dmdl_file = path
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(handler)
    return path


def adopt(name: str) -> None:
    """Hands a library logger that prints through its own handler (Ray's 'ray', DeepSpeed's 'DeepSpeed')
    to the root logger's routing."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True


def route_worker(folder: str | Path, rank: int, verbose: bool = False,
                 explained: Callable[[BaseException], bool] | None = None) -> Path:
    """In a Ray Train worker, after Ray Train configured its logging: a log file per rank, and the
    console handlers Ray installed (whose output Ray forwards to the driver) filtered like ours;
    `explained` as in ConsoleFilter."""
    path = _file_handler(folder, f"worker-{rank}")  # for the worker process's life
    root = logging.getLogger()
    file_handlers = [h for h in root.handlers if getattr(h, "dmdl_file", None) == path]
    for logger in (root, logging.getLogger("ray.train")):  # ray.train does not propagate (Ray Train's choice)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(ConsoleFilter(verbose, explained))
        if logger is not root:
            for handler in file_handlers:
                logger.addHandler(handler)
    if "DeepSpeed" in logging.Logger.manager.loggerDict:
        adopt("DeepSpeed")
    logging.captureWarnings(True)
    return path
