"""The one base class of expected failures: bad input, a missing file or extra, an impossible setting.

The CLI prints such an error as one `dmdl <command>: error: ...` paragraph and exits with code 2;
anything else is a bug and shows its traceback. Every error a user can cause and fix derives from
DmdlError, so no command needs its own list.
"""

from __future__ import annotations


class DmdlError(Exception):
    """An expected failure whose message names the problem and the fix."""


class MissingPathError(DmdlError, FileNotFoundError):
    """A file or folder the user named does not exist."""

    def __str__(self) -> str:  # FileNotFoundError's own would print the args tuple
        return str(self.args[0])


class WriteError(DmdlError, OSError):
    """A file cannot be written: the disk is full, the folder is read-only, ... (the old file, if any, is intact).

    Built as WriteError(errno, message), so `.errno` tells the cause (errno.ENOSPC for a full disk).
    """

    def __str__(self) -> str:
        return str(self.strerror)


class MissingExtraError(DmdlError, ImportError):
    """An optional dependency of dmdl_dist is not installed."""
