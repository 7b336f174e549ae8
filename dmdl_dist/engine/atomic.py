"""Atomic file writes: a temporary file beside the target, then a rename (checkpoints, tables, exports)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block succeeds the file written there replaces `path`.

    The temporary file sits in the same folder, so the rename never crosses file systems and a reader
    sees either the old file or the whole new one. It is removed when the block raises. Its name does
    not end like `path`: writers that guess the format from the suffix must be told the format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Writes a text file atomically (temporary file beside it, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
