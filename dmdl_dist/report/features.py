"""Test-time features of a few images for the pictures, without touching the training's random state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmdl_dist.config import Config
from dmdl_dist.engine.extract import extract_features


def picture_features(
    model: torch.nn.Module, root: str | Path, paths: Sequence[str], cfg: Config, device: torch.device
) -> np.ndarray:
    """Flip-averaged, L2-normalised features (N x D), the ones the protocols score.

    The CPU random state is forked: a DataLoader draws its base seed from it, and the trainer
    calls this between epochs, so a run with pictures trains exactly as one without.
    """
    with torch.random.fork_rng(devices=[]):
        return extract_features(
            model, root, list(paths), height=cfg.data.height, width=cfg.data.width, device=device,
            batch_size=cfg.train.eval_batch_size, workers=cfg.data.loader_workers, flip=True,
        )
