"""Atomic checkpoints: written to a temporary file, then renamed, so a crash never leaves half of one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dmdl_dist.engine.atomic import atomic_path

LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(ValueError):
    """A file given as a checkpoint is not a readable dmdl_dist checkpoint."""


def save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read ({err}); it is not a dmdl_dist checkpoint") from err


def model_state(model: torch.nn.Module) -> dict:
    """fp32 state dict without a DDP 'module.' prefix, so checkpoints load into any wrapper and precision."""
    inner = getattr(model, "module", model)
    return {k: v.float() if v.is_floating_point() else v for k, v in inner.state_dict().items()}  # fp16 runs too
