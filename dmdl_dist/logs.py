"""Where a process's log records go: our lines and real warnings to the console, everything to RUN_DIR/logs/.

Routing is by logger name and level, never by hiding a stream: whatever a process writes to its
stderr without logging (a traceback, a crash, a C++ assertion) still reaches the console.
Libraries that log about themselves at INFO or WARNING (Ray's life cycle, DeepSpeed's
accelerator detection, faiss's loader fall-backs, torch's CUDA probing) show only their errors on
the console; their every record is in the log file. A Python warning is a record of the package
whose code issued it (torch's deprecation notices are torch's, ours and the user's reach the
console). `verbose` puts every record on the console again.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings
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


# A record logged with extra={DRIVER_SHOWS: True}: in a Ray worker it stays in the log file, because the
# driver prints the same news from the epoch's metrics (a worker's console line reaches the driver prefixed).
DRIVER_SHOWS = "dmdl_driver_shows"


class ConsoleFilter(logging.Filter):
    """Passes records at or above their logger's console threshold, except a record logged about an exception
    that `explained(exception)` says someone else explains in its own words (the record stays in the file),
    and, in a Ray worker (`worker`), a record the driver shows (DRIVER_SHOWS)."""

    def __init__(self, verbose: bool = False, explained: Callable[[BaseException], bool] | None = None, *,
                 worker: bool = False):
        super().__init__()
        self.verbose = verbose
        self.explained = explained
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < console_threshold(record.name, self.verbose):
            return False
        if self.worker and getattr(record, DRIVER_SHOWS, False):
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


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a record comes (a test's capture, a redirect)."""

    def __init__(self):
        super().__init__()
        self.dmdl_console = True

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_console(verbose: bool = False) -> None:
    """The CLI's console: one stderr handler on the root logger, filtered by ConsoleFilter."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "dmdl_console", False)]:
        root.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(ConsoleFormatter("%(message)s"))
    handler.addFilter(ConsoleFilter(verbose))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    capture_warnings()


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
                handler.addFilter(ConsoleFilter(verbose, explained, worker=True))
        if logger is not root:
            for handler in file_handlers:
                logger.addHandler(handler)
    adopt_libraries()
    capture_warnings()
    return path


def adopt_libraries() -> None:
    """adopt() the loggers that DeepSpeed and torch gave their own stderr handlers, if imported."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.handlers and (
                _under(name, "DeepSpeed") or _under(name, "torch")):
            adopt(name)


_PACKAGE = re.compile(r"[/\\](?:site|dist)-packages[/\\]([A-Za-z_][A-Za-z0-9_]*)")


def warning_logger(filename: str) -> str:
    """The logger a warning issued in `filename` goes to: its installed package, ours, or 'py.warnings'."""
    found = _PACKAGE.search(filename)
    if found:
        return found.group(1)
    return OURS if f"{OURS}/" in filename.replace("\\", "/") else "py.warnings"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger(warning_logger(filename)).warning("%s", text)


def capture_warnings() -> None:
    """Python warnings become WARNING records of the package that issued them (logging.captureWarnings
    files them all under 'py.warnings', whatever library they come from)."""
    warnings.showwarning = _show_warning


class LineLogger(io.TextIOBase):
    """A text stream that logs each line written to it (for prints: libraries that print instead of log)."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO):
        self.logger, self.level, self._buffer = logger, level, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._buffer = (self._buffer + text).split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, "%s", line)
        return len(text)

    def flush(self) -> None:
        if self._buffer.strip():
            self.logger.log(self.level, "%s", self._buffer)
        self._buffer = ""
