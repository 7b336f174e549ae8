"""Training images decoded and resized once per run, kept in memory.

Every training view and every clustering feature starts with the same bicubic resize of the same
file, and on a small input (SynthVI's 64 x 32) decoding and resizing cost a loader process more
than the random steps after them. ResizedImages holds each image as it comes out of that resize;
the transforms' resize leaves an image already at its size untouched (torchvision returns it as
it is), so a cached image gives bit for bit the views and features the file gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dmdl_dist.data.transforms import resize_step

BYTES_PER_MB = 1 << 20


def cache_bytes(count: int, height: int, width: int) -> int:
    """Memory the cache of `count` RGB images at height x width takes."""
    return count * height * width * 3


class ResizedImages:
    """Images by position, each the bicubic resize to (height, width) of root/path as RGB.

    The pixels live in one uint8 array (N x H x W x 3), so forked DataLoader workers share them
    without copying, and a slice is a view, not a copy.
    """

    def __init__(self, pixels: np.ndarray) -> None:
        if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"expected N x H x W x 3 uint8 pixels, got {pixels.shape} {pixels.dtype}")
        self.pixels = pixels

    @classmethod
    def load(
        cls,
        root: str | Path,
        paths: Sequence[str],
        height: int,
        width: int,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> ResizedImages:
        """Decodes and resizes every image of `paths` (progress(1) after each)."""
        from dmdl_dist.data.images import load_image

        resize = resize_step(height, width)
        pixels = np.empty((len(paths), height, width, 3), dtype=np.uint8)
        for i, path in enumerate(paths):
            pixels[i] = np.asarray(resize(load_image(root, path)))
            if progress is not None:
                progress(1)
        return cls(pixels)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index])

    def slice(self, start: int, end: int) -> ResizedImages:
        return ResizedImages(self.pixels[start:end])
