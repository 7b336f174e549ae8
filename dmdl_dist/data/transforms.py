"""Image transforms, including CBT's modality-specific two-view augmentation (DMDL, CBT step 1).

Each training image yields two views. The second visible view loses its colour (jitter, then one
channel or gray copied to all three); the infrared views gain a colour they never had (adaptive
gray, pseudo-colour). Features that survive both views cannot lean on colour, the cue only the
visible modality carries. The colour steps work on [0, 1] tensors before normalisation; random
erasing works after it, so its random pixels follow the normalised statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from dmdl_dist.data.manifest import INFRARED, VISIBLE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD = 10
# ITU-R BT.601 luma, the weights PIL's convert("L") uses.
LUMA = (0.299, 0.587, 0.114)

# Pseudo-colour maps as control points (intensity, (r, g, b)), linearly interpolated.
COLOUR_MAPS: dict[str, tuple[tuple[float, tuple[float, float, float]], ...]] = {
    "rainbow": ((0.0, (0.0, 0.0, 0.5)), (0.15, (0.0, 0.0, 1.0)), (0.4, (0.0, 1.0, 1.0)),
                (0.6, (1.0, 1.0, 0.0)), (0.85, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0))),
    "hot": ((0.0, (0.0, 0.0, 0.0)), (0.4, (1.0, 0.0, 0.0)), (0.8, (1.0, 1.0, 0.0)), (1.0, (1.0, 1.0, 1.0))),
    "cool": ((0.0, (0.0, 1.0, 1.0)), (1.0, (1.0, 0.0, 1.0))),
    "ocean": ((0.0, (0.0, 0.1, 0.0)), (0.5, (0.0, 0.3, 0.6)), (1.0, (0.8, 1.0, 1.0))),
    "autumn": ((0.0, (0.3, 0.0, 0.1)), (0.5, (1.0, 0.4, 0.0)), (1.0, (1.0, 1.0, 0.4))),
}


def _lookup_table(points: tuple[tuple[float, tuple[float, float, float]], ...], size: int = 256) -> torch.Tensor:
    """3 x size table: the map's colour at size evenly spaced intensities."""
    xs = np.array([x for x, _ in points])
    rgb = np.array([c for _, c in points])  # P x 3
    grid = np.linspace(0.0, 1.0, size)
    return torch.tensor(np.stack([np.interp(grid, xs, rgb[:, c]) for c in range(3)]), dtype=torch.float32)


class ChannelExchange:
    """CBT 1, visible view 2: one of R, G, B or the gray image, chosen uniformly, copied to all channels.

    Input and output: 3 x H x W float in [0, 1].
    """

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        choice = int(torch.randint(4, ()))
        if choice < 3:
            plane = img[choice]
        else:
            plane = torch.tensordot(img.new_tensor(LUMA), img, dims=1)  # H x W
        return plane.expand(3, -1, -1).clone()


class ChannelAdaptiveGray:
    """CBT 1, infrared view 1: with probability p, a random convex combination of the channels on all three.

    The weights are Dirichlet(1, 1, 1): every mixture, including a single channel, is possible, so
    the view covers the gray images a visible camera could have produced. 3 x H x W in [0, 1].
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return img
        weights = -torch.log(torch.rand(3).clamp_min(1e-12))  # exponential draws; normalised -> Dirichlet(1)
        weights = (weights / weights.sum()).to(img.dtype)
        return torch.tensordot(weights, img, dims=1).expand(3, -1, -1).clone()


class PseudoColour:
    """CBT 1, infrared view 2: the intensity mapped through a colour map chosen at random from COLOUR_MAPS.

    Gives the infrared image colours that carry no identity, so the network learns to ignore
    colour rather than to expect its absence. 3 x H x W in [0, 1].
    """

    def __init__(self, size: int = 256) -> None:
        self.tables = torch.stack([_lookup_table(points, size) for points in COLOUR_MAPS.values()])  # M x 3 x S

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        table = self.tables[int(torch.randint(len(self.tables), ()))]  # 3 x S
        intensity = img.mean(dim=0)  # H x W; infrared files repeat one plane in three channels
        index = (intensity.clamp(0, 1) * (table.shape[1] - 1)).round().long()
        return table[:, index].to(img.dtype)  # 3 x H x W


def _geometric(height: int, width: int) -> list:
    """Resize, pad 10 + random crop back to size, horizontal flip; PIL in, [0, 1] tensor out."""
    return [
        v2.Resize((height, width), antialias=True),
        v2.Pad(PAD),
        v2.RandomCrop((height, width)),
        v2.RandomHorizontalFlip(),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ]


def _normalize() -> v2.Normalize:
    return v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)


class TwoViews:
    """Applies two transforms to one image; a class rather than a closure so DataLoader workers can pickle it."""

    def __init__(self, first: Callable, second: Callable) -> None:
        self.first, self.second = first, second

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(image), self.second(image)


def single_view(modality: int, height: int, width: int) -> v2.Compose:
    """The plain training transform (no CBT): geometric jitter and ImageNet normalisation.

    Same signature as train_views so the trainer can pick either; the modality does not matter here.
    """
    _check_modality(modality)
    return v2.Compose([*_geometric(height, width), _normalize()])


def train_views(
    modality: int, height: int, width: int, *, erase_p: float = 0.5, gray_p: float = 0.5
) -> TwoViews:
    """CBT's two views of a training image of the given modality (VISIBLE or INFRARED)."""
    _check_modality(modality)
    if modality == VISIBLE:
        first = v2.Compose([*_geometric(height, width), _normalize()])
        second = v2.Compose([
            v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5),
            *_geometric(height, width),
            ChannelExchange(),
            _normalize(),
            v2.RandomErasing(p=erase_p, scale=(0.02, 0.5), value="random"),
        ])
    else:
        first = v2.Compose([*_geometric(height, width), ChannelAdaptiveGray(gray_p), _normalize()])
        second = v2.Compose([*_geometric(height, width), PseudoColour(), _normalize()])
    return TwoViews(first, second)


def test_transform(height: int, width: int) -> v2.Compose:
    """Resize and normalise: features for clustering and evaluation."""
    return v2.Compose([
        v2.Resize((height, width), antialias=True),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        _normalize(),
    ])


def _check_modality(modality: int) -> None:
    if modality not in (VISIBLE, INFRARED):
        raise ValueError(f"modality must be VISIBLE ({VISIBLE}) or INFRARED ({INFRARED}), got {modality!r}")


test_transform.__test__ = False  # not a pytest test, though its name starts with "test"
