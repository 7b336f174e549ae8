"""Image transforms, including CBT's modality-specific two-view augmentation (DMDL, CBT step 1).

Each training image yields two views, built as the authors' release builds them. The second
visible view loses its colour (jitter, then one channel copied to all three); the infrared views
gain colour variation they never had (a channel copy or gray mix, a pseudo-colour). Features that
survive both views cannot lean on colour, the cue only the visible modality carries.

Every random choice draws from torch's global generator (torchvision's v2 transforms do too;
nothing here uses python's random or numpy's), so seeding it before a call fixes both views:
ImageDataset does that with sample_seed's value, which makes an image's views independent of how
many workers and loader processes draw them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from dmdl_dist.data.manifest import INFRARED, VISIBLE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD = 10  # the release's zero padding before the random crop, in pixels at 288 x 144
# The release's gray mix (ITU-R BT.601 luma as it writes the weights).
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
# Pseudo-colour: output channel i is channel i of a colour map drawn from PSEUDO_COLOUR_MAPS[i].
# OpenCV writes BGR, and the release copies index to index, so these are the maps it uses for
# the image's channels 0, 1, 2 (its variable names call them R, B, G).
PSEUDO_COLOUR_MAPS = (
    (cv2.COLORMAP_OCEAN, cv2.COLORMAP_CIVIDIS),
    (cv2.COLORMAP_INFERNO, cv2.COLORMAP_AUTUMN),
    (cv2.COLORMAP_DEEPGREEN, cv2.COLORMAP_JET),
)
ERASE_MIN_AREA = 0.02
ERASE_MIN_ASPECT = 0.3
ERASE_ATTEMPTS = 10


def sample_seed(run_seed: int, epoch: int, step: int, position: int, modality: int) -> int:
    """The seed of one drawn sample's views: a 63-bit hash of where the sample sits in the run.

    It depends on nothing about who draws the sample (rank, loader process), so a run's views are
    the same on any number of workers. All five numbers must be >= 0.
    """
    words = np.random.SeedSequence([run_seed, epoch, step, position, modality]).generate_state(1, np.uint64)
    return int(words[0]) >> 1


def _randint(n: int) -> int:
    """Uniform in {0, ..., n - 1}, from torch's global generator."""
    return int(torch.randint(n, ()))


def _uniform(low: float = 0.0, high: float = 1.0) -> float:
    """Uniform in [low, high), from torch's global generator."""
    return low + (high - low) * float(torch.rand((), dtype=torch.float64))


class RandomErasing:
    """timm's RandomErasing(mode='pixel', max_count=1), the release's: one box of N(0, 1) pixels.

    With probability p, up to ERASE_ATTEMPTS tries: area uniform in [min_area, max_area] of the
    image, log-uniform aspect (height / width) in [0.3, 1 / 0.3]; the first box that fits strictly
    inside is filled with independent N(0, 1) values on every channel. Applied after normalisation,
    so those values look like normalised pixels. C x H x W in, C x H x W out (a new tensor when erased).
    """

    def __init__(self, p: float, max_area: float, min_area: float = ERASE_MIN_AREA) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"erasing probability must lie in [0, 1], got {p}")
        if not 0.0 < min_area <= max_area <= 1.0:
            raise ValueError(f"erased area must satisfy 0 < {min_area} <= max_area <= 1, got {max_area}")
        self.p, self.min_area, self.max_area = p, min_area, max_area

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if _uniform() >= self.p:
            return img
        channels, height, width = img.shape
        log_aspect = (math.log(ERASE_MIN_ASPECT), math.log(1.0 / ERASE_MIN_ASPECT))
        for _ in range(ERASE_ATTEMPTS):
            area = _uniform(self.min_area, self.max_area) * height * width
            aspect = math.exp(_uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if h < height and w < width:
                top, left = _randint(height - h + 1), _randint(width - w + 1)
                out = img.clone()
                out[:, top : top + h, left : left + w] = torch.randn(channels, h, w, dtype=img.dtype)
                return out
        return img


class ChannelExchange:
    """CBT 1, visible view 2: one of the three channels, chosen uniformly, copied to all three.

    Never the gray mix (the release's ChannelExchange(gray=2)). 3 x H x W in and out.
    """

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img[_randint(3)].expand(3, -1, -1).clone()


class ChannelAdaptiveGray:
    """CBT 1, infrared view 1: a channel copy (3/4), else the gray mix with probability gray_p.

    One of four outcomes, uniformly: channel 0, 1 or 2 copied to all three, or the fourth, in
    which the image becomes GRAY_WEIGHTS' mix on all three with probability gray_p and stays as
    it is otherwise (the release's ChannelAdapGray). Runs on the normalised tensor, where an
    infrared image's three equal planes differ, so every outcome changes it a little.
    """

    def __init__(self, gray_p: float = 0.5) -> None:
        if not 0.0 <= gray_p <= 1.0:
            raise ValueError(f"gray probability must lie in [0, 1], got {gray_p}")
        self.gray_p = gray_p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        choice = _randint(4)
        if choice < 3:
            return img[choice].expand(3, -1, -1).clone()
        if _uniform() >= self.gray_p:
            return img
        gray = torch.tensordot(img.new_tensor(GRAY_WEIGHTS), img, dims=1)  # H x W
        return gray.expand(3, -1, -1).clone()


def pseudo_colour(rgb: np.ndarray, maps: Sequence[int]) -> np.ndarray:
    """H x W x 3 uint8 -> H x W x 3 uint8: channel i is channel i of OpenCV's colour map maps[i] of rgb.

    applyColorMap turns a three-channel input to gray first; infrared files repeat one plane,
    so that gray is the plane itself.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    out = np.empty_like(rgb)
    for channel, colour_map in enumerate(maps):
        out[..., channel] = cv2.applyColorMap(rgb, colour_map)[..., channel]
    return out


class PseudoColour:
    """CBT 1, infrared view 2: pseudo_colour with each channel's map drawn from PSEUDO_COLOUR_MAPS.

    Gives the infrared image colours that carry no identity, so the network learns to ignore
    colour rather than to expect its absence. PIL RGB image in and out (before ToTensor).
    """

    def __call__(self, image: Image.Image) -> Image.Image:
        maps = [choices[_randint(len(choices))] for choices in PSEUDO_COLOUR_MAPS]
        return Image.fromarray(pseudo_colour(np.asarray(image.convert("RGB")), maps))


def resize_step(height: int, width: int) -> v2.Resize:
    """The bicubic resize every view and feature starts with; an image already at the size passes untouched
    (what lets data/image_cache.py resize once per run)."""
    return v2.Resize((height, width), interpolation=InterpolationMode.BICUBIC, antialias=True)


def _geometric(height: int, width: int, pad: int) -> list:
    """Bicubic resize, zero pad `pad` + random crop back to size, horizontal flip: PIL in, PIL out."""
    return [
        resize_step(height, width),
        v2.Pad(pad),
        v2.RandomCrop((height, width)),
        v2.RandomHorizontalFlip(0.5),
    ]


def _to_normalised() -> list:
    """PIL -> 3 x H x W float tensor in [0, 1] (ToTensor) -> ImageNet-normalised plain tensor."""
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        v2.ToPureTensor(),
    ]


def _common(height: int, width: int, erase_p: float, erase_max_area: float, *, pad: int = PAD,
            colour: Sequence = ()) -> list:
    """Every training view: geometry, [colour steps on the PIL image], normalisation, erasing."""
    return [*_geometric(height, width, pad), *colour, *_to_normalised(), RandomErasing(erase_p, erase_max_area)]


class TwoViews:
    """Applies two transforms to one image; a class rather than a closure so DataLoader workers can pickle it."""

    def __init__(self, first: Callable, second: Callable) -> None:
        self.first, self.second = first, second

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(image), self.second(image)


def single_view(
    modality: int, height: int, width: int, *, erase_p: float = 0.5, erase_max_area: float = 0.5, pad: int = PAD
) -> v2.Compose:
    """The plain training transform (cbt.augment off): the common pipeline, erasing included.

    Same signature as train_views (less gray_p) so the trainer can pick either; the modality
    does not matter here.
    """
    _check_modality(modality)
    return v2.Compose(_common(height, width, erase_p, erase_max_area, pad=pad))


def train_views(
    modality: int, height: int, width: int, *, erase_p: float = 0.5, gray_p: float = 0.5, erase_max_area: float = 0.5,
    pad: int = PAD,
) -> TwoViews:
    """CBT's two views of a training image of the given modality (VISIBLE or INFRARED).

    The defaults are the release's stage-1 values; erase_max_area is cbt.erase_max_area in
    stage 1 and cbt.erase_max_area_stage2 in stage 2 (0.6 on RegDB); pad is data.pad.
    """
    _check_modality(modality)
    if modality == VISIBLE:
        first = v2.Compose(_common(height, width, erase_p, erase_max_area, pad=pad))
        jitter = v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5)
        colour = _common(height, width, erase_p, erase_max_area, pad=pad, colour=[jitter])
        second = v2.Compose([*colour, ChannelExchange()])
    else:
        first = v2.Compose([*_common(height, width, erase_p, erase_max_area, pad=pad), ChannelAdaptiveGray(gray_p)])
        second = v2.Compose(_common(height, width, erase_p, erase_max_area, pad=pad, colour=[PseudoColour()]))
    return TwoViews(first, second)


def test_transform(height: int, width: int) -> v2.Compose:
    """Bicubic resize and normalise: features for clustering and evaluation."""
    return v2.Compose([resize_step(height, width), *_to_normalised()])


def _check_modality(modality: int) -> None:
    if modality not in (VISIBLE, INFRARED):
        raise ValueError(f"modality must be VISIBLE ({VISIBLE}) or INFRARED ({INFRARED}), got {modality!r}")


test_transform.__test__ = False  # not a pytest test, though its name starts with "test"
