"""Optional dependencies, checked before a command does any work (not 16 s into its set-up)."""

from __future__ import annotations

import importlib

from dmdl_dist.errors import MissingExtraError

FAISS_HINT = "pip install 'dmdl-dist[cpu]' (faiss-cpu) or 'dmdl-dist[gpu]' (faiss-gpu)"


def require_faiss(purpose: str) -> None:
    """Raises MissingExtraError naming `purpose` and the pip command when faiss cannot be imported."""
    try:
        importlib.import_module("faiss")
    except ImportError as err:
        raise MissingExtraError(f"{purpose} needs faiss, which is not installed ({err}): {FAISS_HINT}") from None
