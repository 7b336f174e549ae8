"""CBT's two views built from torchvision's own transforms: the oracle of data/transforms.py's View.

Each view is torchvision's Pad, RandomCrop, RandomHorizontalFlip, [ColorJitter on the float
image], Normalize, then our RandomErasing and channel step: the release's pipeline with the same
draws in the same order as View, but one torchvision dispatch per step and image.
tests/test_transforms.py checks View against it with the same seeds; bench/augment.py times both.
Training never uses it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from dmdl_dist.data.manifest import VISIBLE
from dmdl_dist.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAD,
    ChannelAdaptiveGray,
    ChannelExchange,
    PseudoColour,
    RandomErasing,
    TwoViews,
    _check_modality,
)


def reference_view(height: int, width: int, *, pad: int, erase_p: float, erase_max_area: float,
                   jitter: bool = False, pseudo: bool = False, channel: Callable | None = None) -> v2.Compose:
    """One view of an image already at height x width (uint8 PIL or array in, 3 x H x W tensor out)."""
    geometry = [v2.Pad(pad), v2.RandomCrop((height, width)), v2.RandomHorizontalFlip(0.5)]
    steps = [*geometry, PseudoColour()] if pseudo else [v2.ToImage(), *geometry]
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    steps += [v2.ColorJitter(0.5, 0.5, 0.5, 0.5)] if jitter else []
    steps += [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), v2.ToPureTensor(), RandomErasing(erase_p, erase_max_area)]
    return v2.Compose(steps + ([channel] if channel is not None else []))


def reference_views(modality: int, height: int, width: int, *, erase_p: float = 0.5, gray_p: float = 0.5,
                    erase_max_area: float = 0.5, pad: int = PAD) -> TwoViews:
    """train_views' two views, from torchvision's transforms."""
    _check_modality(modality)
    common = dict(pad=pad, erase_p=erase_p, erase_max_area=erase_max_area)
    if modality == VISIBLE:
        return TwoViews(reference_view(height, width, **common),
                        reference_view(height, width, jitter=True, channel=ChannelExchange(), **common))
    return TwoViews(reference_view(height, width, channel=ChannelAdaptiveGray(gray_p), **common),
                    reference_view(height, width, pseudo=True, **common))
