"""One run per run folder: an exclusive lock file holding the owner's pid and host.

Two runs writing one folder would mix their configs, checkpoints, metrics and test tables, and
both would end with exit code 0. The lock is RUN_DIR/.lock, created with O_CREAT | O_EXCL (an
atomic test-and-create, also on NFS v3+), holding {"pid", "host", "started"}. A lock whose
process is gone from this host is stale and taken over; one held on another host cannot be
checked from here and is refused with the command that clears it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from dmdl_dist.engine.atomic import process_alive
from dmdl_dist.errors import DmdlError

LOCK = ".lock"
_STARTING_S = 60  # an unreadable lock younger than this may be one being written right now


class RunLockedError(DmdlError):
    """Another run holds the run folder."""


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Holds RUN_DIR/.lock for the block (creating the folder); refuses with RunLockedError when taken."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    mine = _acquire(path)
    try:
        yield path
    finally:
        if _read(path) == mine:  # never remove a lock someone took over after a mistaken stale verdict
            path.unlink(missing_ok=True)


def _acquire(path: Path) -> dict:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):  # a stale lock is moved aside, then the create is tried again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read(path)
            if not _stale(path, held):
                raise RunLockedError(_refusal(path, held)) from None
            _move_aside(path, held)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(owner))
            f.flush()
            os.fsync(f.fileno())
        return owner
    raise RunLockedError(f"{path.parent} is being claimed by several runs at once; start one run per run folder")


def _read(path: Path) -> dict | None:
    """The lock's owner, or None when the file is missing, empty or not ours."""
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return held if isinstance(held, dict) and isinstance(held.get("pid"), int) else None


def _stale(path: Path, held: dict | None) -> bool:
    if held is None:  # empty or garbled: its writer died between create and write, or is writing now
        try:
            return time.time() - path.stat().st_mtime > _STARTING_S
        except FileNotFoundError:
            return True
    return held.get("host") == socket.gethostname() and not process_alive(held["pid"])


def _move_aside(path: Path, held: dict | None) -> None:
    """Removes a stale lock, unless it changed since it was judged (another run took it over meanwhile)."""
    aside = path.with_name(f"{LOCK}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != held:  # we moved a fresh lock: put it back (fails only when yet another run holds one)
        with suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def _refusal(path: Path, held: dict | None) -> str:
    run_dir = path.parent
    if held is None:
        return (f"{run_dir} is locked by another run that is starting ({path} is being written); "
                f"wait for it, or give this run another --name")
    where = f"process {held['pid']} on {held.get('host', '?')}, started {held.get('started', '?')}"
    if held.get("host") == socket.gethostname():
        return f"{run_dir} is in use by another run ({where}); wait for it to end, or give this run another --name"
    return (f"{run_dir} is in use by a run on another machine ({where}); if that run has ended, delete {path} "
            "and start again, else give this run another --name")
