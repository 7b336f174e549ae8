"""Optional dependencies, checked before a command does any work (not 16 s into its set-up)."""

from __future__ import annotations

import importlib.util

from dmdl_dist.errors import MissingExtraError

FAISS_HINT = "pip install 'dmdl-dist[cpu]' (faiss-cpu) or 'dmdl-dist[gpu]' (faiss-gpu)"


def require_faiss(purpose: str) -> None:
    """Raises MissingExtraError naming `purpose` and the pip command when faiss is not installed.

    Looks the module up without importing it: the import itself (and its log lines) waits for first use.
    """
    if importlib.util.find_spec("faiss") is None:
        raise MissingExtraError(f"{purpose} needs faiss, which is not installed: {FAISS_HINT}")
