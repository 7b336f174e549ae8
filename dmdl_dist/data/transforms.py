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

import functools
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


@functools.cache
def _colour_map_table(colour_map: int) -> np.ndarray:
    """OpenCV's colour map as a 256 x 3 lookup table (gray level -> the 3 channels applyColorMap writes)."""
    return cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), colour_map).reshape(256, 3)


def pseudo_colour(rgb: np.ndarray, maps: Sequence[int]) -> np.ndarray:
    """H x W x 3 uint8 -> H x W x 3 uint8: channel i is channel i of OpenCV's colour map maps[i] of rgb.

    applyColorMap turns a three-channel input to gray first (as BGR) and looks the gray level up in
    the map; this does the same with one gray conversion and three table lookups. Infrared files
    repeat one plane, so that gray is the plane itself.
    """
    gray = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_BGR2GRAY)
    return cv2.merge([cv2.LUT(gray, _colour_map_table(m)[:, c].copy()) for c, m in enumerate(maps)])


class PseudoColour:
    """CBT 1, infrared view 2: pseudo_colour with each channel's map drawn from PSEUDO_COLOUR_MAPS.

    Gives the infrared image colours that carry no identity, so the network learns to ignore
    colour rather than to expect its absence. H x W x 3 uint8 (or a PIL RGB image) in, uint8 array out.
    """

    def __call__(self, image: np.ndarray | Image.Image) -> np.ndarray:
        maps = [choices[_randint(len(choices))] for choices in PSEUDO_COLOUR_MAPS]
        return pseudo_colour(np.asarray(image), maps)


class ColourJitter:
    """torchvision's ColorJitter(b, c, s, h) on an H x W x 3 float image in [0, 1], as its tensor kernels compute it.

    The same draws in the same order (a permutation of the four steps, then the brightness,
    contrast, saturation and hue factors) and the same arithmetic: brightness scales, contrast
    blends with the mean gray level, saturation with each pixel's gray level (GRAY_WEIGHTS), each
    clipped to [0, 1]; hue turns the HSV hue by the factor of a full turn (OpenCV's float HSV,
    which is torchvision's up to rounding). The release jitters the 8-bit PIL image, which rounds
    after every step; the float steps differ from it by at most a level or two.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float) -> None:
        if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
            raise ValueError(f"jitter strengths must be >= 0 (hue <= 0.5), got {brightness, contrast, saturation, hue}")
        self.ranges = [(max(0.0, 1 - v), 1 + v) for v in (brightness, contrast, saturation)] + [(-hue, hue)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        order = torch.randperm(4).tolist()
        factors = [float(torch.empty(1).uniform_(low, high).item()) for low, high in self.ranges]
        for step in order:
            x = _JITTER_STEPS[step](x, factors[step])
        return x


def _brightness(x: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(x * np.float32(factor), 0.0, 1.0)


def _blend(x: np.ndarray, other: np.ndarray | np.float32, factor: float) -> np.ndarray:
    return np.clip(x * np.float32(factor) + other * np.float32(1.0 - factor), 0.0, 1.0)


def _gray(x: np.ndarray) -> np.ndarray:
    return x @ np.asarray(GRAY_WEIGHTS, dtype=np.float32)  # H x W


def _contrast(x: np.ndarray, factor: float) -> np.ndarray:
    return _blend(x, np.float32(_gray(x).mean()), factor)


def _saturation(x: np.ndarray, factor: float) -> np.ndarray:
    return _blend(x, _gray(x)[..., None], factor)


def _hue(x: np.ndarray, factor: float) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(x, dtype=np.float32), cv2.COLOR_RGB2HSV)  # hue in degrees
    hsv[..., 0] = np.mod(hsv[..., 0] + np.float32(360.0 * factor), np.float32(360.0))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


_JITTER_STEPS = (_brightness, _contrast, _saturation, _hue)  # torchvision's fn_idx order


def resize_step(height: int, width: int) -> v2.Resize:
    """The bicubic resize every view and feature starts with; an image already at the size passes untouched
    (what lets data/image_cache.py resize once per run)."""
    return v2.Resize((height, width), interpolation=InterpolationMode.BICUBIC, antialias=True)


def _pixels(image: np.ndarray | Image.Image, height: int, width: int) -> np.ndarray:
    """H x W x 3 uint8 at the size: the image as it is when it already has it, else resize_step's bicubic resize."""
    pixels = np.asarray(image)
    if pixels.shape[:2] == (height, width) and pixels.ndim == 3:
        return pixels
    if not isinstance(image, Image.Image):
        image = Image.fromarray(pixels)
    return np.asarray(resize_step(height, width)(image.convert("RGB")))


@functools.cache
def _mean_std() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    """H x W x 3, uint8 or float in [0, 1] -> ImageNet-normalised 3 x H x W float tensor (ToDtype, Normalize)."""
    x = torch.from_numpy(pixels.transpose(2, 0, 1).copy(order="C"))  # a writable copy: cached images are read-only
    x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x
    mean, std = _mean_std()
    return x.sub_(mean).div_(std)


def _crop_flip(pixels: np.ndarray, pad: int) -> np.ndarray:
    """Zero pad by `pad`, crop back to the size at a random offset, flip left-right half the time.

    torchvision's Pad, RandomCrop and RandomHorizontalFlip(0.5) with their draws: top, then left
    (none when pad is 0), then the flip.
    """
    height, width = pixels.shape[:2]
    top = int(torch.randint(0, 2 * pad + 1, size=())) if pad else 0
    left = int(torch.randint(0, 2 * pad + 1, size=())) if pad else 0
    padded = cv2.copyMakeBorder(np.ascontiguousarray(pixels), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    out = padded[top : top + height, left : left + width]
    return out[:, ::-1] if float(torch.rand(1)) < 0.5 else out


class View:
    """One training view of an image: the release's steps in the release's order, on 8-bit and float arrays.

    Bicubic resize (skipped for an image already at the size), zero pad + random crop, horizontal
    flip, [pseudo-colour on the 8-bit image], to [0, 1], [colour jitter], ImageNet normalisation,
    random erasing, [a channel step on the normalised tensor]. The draws are torchvision's for the
    same pipeline, in the same order. Written on arrays because torchvision's per-transform dispatch
    cost about 1 ms a pair of 64 x 32 views, more than the small network's own step on 2 CPU cores.
    """

    def __init__(self, height: int, width: int, *, pad: int, erase_p: float, erase_max_area: float,
                 pseudo: bool = False, jitter: ColourJitter | None = None,
                 channel: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.height, self.width, self.pad = height, width, pad
        self.pseudo = PseudoColour() if pseudo else None
        self.jitter, self.channel = jitter, channel
        self.erase = RandomErasing(erase_p, erase_max_area)

    def __call__(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        pixels = _crop_flip(_pixels(image, self.height, self.width), self.pad)
        if self.pseudo is not None:
            pixels = self.pseudo(pixels)
        if self.jitter is not None:
            pixels = self.jitter(pixels.astype(np.float32) / np.float32(255.0))
        out = self.erase(_normalised(pixels))
        return out if self.channel is None else self.channel(out)


class TwoViews:
    """Applies two transforms to one image; a class rather than a closure so DataLoader workers can pickle it."""

    def __init__(self, first: Callable, second: Callable) -> None:
        self.first, self.second = first, second

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(image), self.second(image)


def single_view(
    modality: int, height: int, width: int, *, erase_p: float = 0.5, erase_max_area: float = 0.5, pad: int = PAD
) -> View:
    """The plain training transform (cbt.augment off): geometry, normalisation, erasing.

    Same signature as train_views (less gray_p) so the trainer can pick either; the modality
    does not matter here.
    """
    _check_modality(modality)
    return View(height, width, pad=pad, erase_p=erase_p, erase_max_area=erase_max_area)


def train_views(
    modality: int, height: int, width: int, *, erase_p: float = 0.5, gray_p: float = 0.5, erase_max_area: float = 0.5,
    pad: int = PAD,
) -> TwoViews:
    """CBT's two views of a training image of the given modality (VISIBLE or INFRARED).

    The defaults are the release's stage-1 values; erase_max_area is cbt.erase_max_area in
    stage 1 and cbt.erase_max_area_stage2 in stage 2 (0.6 on RegDB); pad is data.pad.
    """
    _check_modality(modality)
    common = dict(pad=pad, erase_p=erase_p, erase_max_area=erase_max_area)
    if modality == VISIBLE:
        first = View(height, width, **common)
        second = View(height, width, jitter=ColourJitter(0.5, 0.5, 0.5, 0.5), channel=ChannelExchange(), **common)
    else:
        first = View(height, width, channel=ChannelAdaptiveGray(gray_p), **common)
        second = View(height, width, pseudo=True, **common)
    return TwoViews(first, second)


class TestTransform:
    """Bicubic resize (skipped for an image already at the size) and normalise: features for clustering and
    evaluation."""

    __test__ = False  # not a pytest test, though its name starts with "Test"

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def __call__(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        return _normalised(_pixels(image, self.height, self.width))


def test_transform(height: int, width: int) -> TestTransform:
    """Bicubic resize and normalise: features for clustering and evaluation."""
    return TestTransform(height, width)


def _check_modality(modality: int) -> None:
    if modality not in (VISIBLE, INFRARED):
        raise ValueError(f"modality must be VISIBLE ({VISIBLE}) or INFRARED ({INFRARED}), got {modality!r}")


test_transform.__test__ = False  # not a pytest test, though its name starts with "test"
