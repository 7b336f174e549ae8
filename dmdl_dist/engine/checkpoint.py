"""Atomic checkpoints: written to a temporary file, then renamed, so a crash never leaves half of one.

Checkpoints hold tensors and plain values only (dicts, lists, strings, numbers: the config and the
run state are stored as such) and are read with torch.load(weights_only=True): a file whose pickle
names any other Python object is refused, never run.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from dmdl_dist.engine.atomic import atomic_path
from dmdl_dist.errors import DmdlError, MissingPathError

LAST = "last.pt"
BEST = "best.pt"
_SHOWN = 3  # mismatched tensors an error lists


class CheckpointError(DmdlError, ValueError):
    """A file given as a checkpoint is not a readable dmdl_dist checkpoint, or not one of this network."""


def save_atomic(obj: Any, path: Path) -> None:
    # Through a Python file object: a failed write then raises OSError with its errno (atomic_path turns a
    # full disk into one clear error) instead of the C++ writer's "basic_ios::clear".
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load(path: Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict:
    """A checkpoint's payload; tensors and plain values only (weights_only), else CheckpointError.

    mmap=True maps the tensors instead of reading them: cheap when only the config is wanted.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"the Python object {found.group(1)}" if found else "Python objects other than tensors"
        raise CheckpointError(
            f"checkpoint {path} refused: it holds {what}, which loading would run as code; dmdl_dist "
            "checkpoints hold only tensors and plain values. Use a checkpoint written by `dmdl train`"
        ) from None
    except Exception as err:  # a truncated or foreign file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({reason}); it is not a dmdl_dist checkpoint") \
            from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a dmdl_dist checkpoint")
    return payload


def model_state(model: torch.nn.Module) -> dict:
    """fp32 state dict without a DDP 'module.' prefix, so checkpoints load into any wrapper and precision."""
    inner = getattr(model, "module", model)
    return {k: v.float() if v.is_floating_point() else v for k, v in inner.state_dict().items()}  # fp16 runs too


def load_weights(model: torch.nn.Module, saved: dict, path: Path, expected: str) -> None:
    """Loads saved["model"] into `model`; weights of another network are one CheckpointError, not a trace.

    expected: the network the caller built, e.g. "model.arch=small, model.non_local=False".
    """
    state = saved.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no model weights (no 'model' entry)")
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
               if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or resized:
        problems = []
        if resized:
            problems.append(f"{len(resized)} tensors of another shape (e.g. {'; '.join(resized[:_SHOWN])})")
        if missing:
            problems.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:_SHOWN])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unknown tensors (e.g. {', '.join(unexpected[:_SHOWN])})")
        raise CheckpointError(
            f"checkpoint {path} holds the weights of another network than {expected} (its config: "
            f"{describe_model(saved.get('config'))}): {'; '.join(problems)}"
        )
    model.load_state_dict(state)


def describe_model(config: Any) -> str:
    """The model.* keys of a checkpoint's config as 'model.arch=..., ...', or what is known of them."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return "its config does not say which"
    return ", ".join(f"model.{k}={model[k]}" for k in ("arch", "non_local", "last_stride") if k in model)
