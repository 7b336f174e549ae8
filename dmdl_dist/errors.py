"""The one base class of expected failures: bad input, a missing file or extra, an impossible setting.

The CLI prints such an error as one `dmdl <command>: error: ...` paragraph and exits with code 2;
anything else is a bug and shows its traceback. Every error a user can cause and fix derives from
DmdlError, so no command needs its own list.
"""

from __future__ import annotations


class DmdlError(Exception):
    """An expected failure whose message names the problem and the fix."""
