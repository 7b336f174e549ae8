"""Atomic file writes: a temporary file beside the target, then a rename (checkpoints, tables, exports).

A write that fails (a full disk, a read-only folder) raises WriteError naming the file and the
cause, and leaves the previous file as it was. A process killed mid-write leaves its temporary
file behind (`.<name>.tmp-<pid>`); remove_orphans clears those at the next start of a run.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from dmdl_dist.errors import WriteError

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
# errnos that mean "this file cannot be written here", whichever call of a writer meets them
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def temporary_name(path: Path, pid: int | None = None) -> Path:
    """The temporary file atomic_path writes before the rename: `.<name>.tmp-<pid>` beside `path`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block succeeds the file written there replaces `path`.

    The temporary file sits in the same folder, so the rename never crosses file systems and a reader
    sees either the old file or the whole new one. It is created (empty) before the block runs, so a
    folder that cannot be written fails before any work, and it is removed when the block raises. Its
    name does not end like `path`: writers that guess the format from the suffix must be told the format.

    Raises:
        WriteError: the folder or the disk refused the write (ENOSPC, EROFS, EACCES, ...).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except Exception as err:
        cause = _write_cause(err)
        if cause is None:
            raise
        raise write_error(path, cause) from None
    finally:
        with suppress(OSError):  # a read-only folder: nothing was created to remove
            tmp.unlink(missing_ok=True)


def ensure_writable(path: str | Path) -> Path:
    """Raises WriteError now, before any work, when `path` could not be written later (folder read-only, ...).

    Creates the folder and a temporary file beside `path`, then removes the file; `path` is not touched.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def write_error(path: Path, cause: OSError) -> WriteError:
    """One clear error for a write the system refused, saying what became of the old file."""
    code = errno.errorcode.get(cause.errno, str(cause.errno))
    kept = f"the previous {path.name} is intact" if path.is_file() else "nothing was written"
    if cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free space on that disk (or write elsewhere) and run again"
    else:
        fix = "choose a folder you can write to"
    reason = cause.strerror or str(cause)
    return WriteError(cause.errno, f"cannot write {path}: {reason} ({code}); {kept}; {fix}")


def _write_cause(err: BaseException) -> OSError | None:
    """The OSError behind a failed write, also when a library wrapped it in its own exception."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, WriteError):
            return None  # already clear
        if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


def write_text(path: str | Path, text: str) -> Path:
    """Writes a text file atomically (temporary file beside it, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one we may not signal counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(folder: str | Path, *, every: bool = False) -> list[Path]:
    """Deletes the temporary files of interrupted atomic writes under `folder` (recursively).

    A temporary file whose writer is still running is kept, unless `every`: the caller holds the
    folder's run lock, so no other writer can be at work there (a pid says nothing about another host).
    Returns the files removed.
    """
    removed = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            match = _TMP.match(name)
            if match is None or (not every and process_alive(int(match["pid"]))):
                continue
            file = Path(dirpath) / name
            with suppress(FileNotFoundError):
                file.unlink()
                removed.append(file)
    return removed
