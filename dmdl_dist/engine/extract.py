"""Feature extraction over a list of images: the clustering refresh and evaluation both use it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dmdl_dist.config import Config
from dmdl_dist.data.images import ImageDataset
from dmdl_dist.data.transforms import test_transform


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    root: str | Path,
    paths: Sequence[str],
    *,
    height: int,
    width: int,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    flip: bool = False,
    desc: str | None = None,
    cache: Sequence | None = None,
) -> np.ndarray:
    """L2-normalised BN-neck features, N x D float32, in the order of `paths`.

    With flip=True the feature is the normalised mean of the image's and its mirror's
    (the field's test-time feature); the clustering refresh uses flip=False. `cache`: the images of
    `paths` already decoded and resized (data/image_cache.py), or None to read the files.
    """
    inner = getattr(model, "module", model)
    was_training = inner.training
    inner.eval()
    dtype = next(inner.parameters()).dtype  # fp16 modules (DeepSpeed's fp16 mode) take half inputs
    loader = DataLoader(
        ImageDataset(root, list(paths), test_transform(height, width), cache=cache),
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
    )
    out = np.empty((len(paths), inner.feat_dim), dtype=np.float32)
    for images, idx in tqdm(loader, desc=desc, disable=desc is None, leave=False, unit="batch"):
        images = images.to(device, dtype=dtype, non_blocking=True)
        feats = inner.extract(images, flip=flip)
        out[idx.numpy()] = feats.float().cpu().numpy()
    inner.train(was_training)
    return out


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
