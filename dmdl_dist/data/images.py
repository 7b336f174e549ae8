"""Image loading and verification.

A single unreadable file otherwise surfaces hours into a run, inside a DataLoader worker of
one rank; verify_images finds them all before training starts, in a few seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch.utils.data
from PIL import Image, UnidentifiedImageError

from dmdl_dist.errors import DmdlError

SKIP_SWITCH = "data.skip_bad_images=true"
_SHOWN = 5  # how many bad images an error message lists


class BadImagesError(DmdlError, ValueError):
    """Images of a manifest that cannot be read; `bad` holds (relative path, reason) pairs."""

    def __init__(self, root: Path, bad: list[tuple[str, str]], total: int) -> None:
        shown = "\n".join(f"  {path}: {reason}" for path, reason in bad[:_SHOWN])
        more = f"\n  ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        super().__init__(
            f"{len(bad)} of {total} images under {root} cannot be read:\n{shown}{more}\n"
            f"Replace or delete them, or set {SKIP_SWITCH} to leave them out of the manifest."
        )
        self.root, self.bad, self.total = root, bad, total

    def __reduce__(self):  # rebuild from the fields, so the error survives pickling (Ray workers)
        return type(self), (self.root, self.bad, self.total)


def image_problem(file: Path) -> str | None:
    """Why file cannot be used as an image (missing, empty, not an image, corrupt), or None.

    Decodes the whole image: Image.verify() does not notice a JPEG cut short. Relies on PIL's
    default ImageFile.LOAD_TRUNCATED_IMAGES = False.
    """
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"cannot be read ({err})"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(file) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify it)"
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for damaged files
        return f"truncated or corrupt ({type(err).__name__}: {err})"
    return None


def find_bad_images(
    root: str | Path,
    paths: Sequence[str],
    *,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, str]]:
    """(relative path, reason) of every unreadable image, in the order of paths.

    Threads suffice: PIL releases the GIL while it reads and decodes.
    progress, when given, is called as progress(done, total) after each image.
    """
    root = Path(root)
    bad = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = pool.map(image_problem, (root / path for path in paths), chunksize=64)
        for done, (path, problem) in enumerate(zip(paths, problems, strict=True), start=1):
            if problem is not None:
                bad.append((path, problem))
            if progress is not None:
                progress(done, len(paths))
    return bad


def verify_images(
    root: str | Path,
    table: pa.Table,
    *,
    skip_bad: bool = False,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """Opens every image of a manifest; returns it whole, or without the bad rows when skip_bad.

    Raises:
        BadImagesError: some images cannot be read and skip_bad is False. Callers that skip should
            say what was left out: check_images returns the dropped images too.
    """
    return check_images(root, table, skip_bad=skip_bad, workers=workers, progress=progress)[0]


def check_images(
    root: str | Path,
    table: pa.Table,
    *,
    skip_bad: bool = False,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pa.Table, list[tuple[str, str]]]:
    """(the manifest without its unreadable images, the (relative path, reason) of each one left out).

    Raises:
        BadImagesError: some images cannot be read and skip_bad is False.
    """
    paths = table.column("path").to_pylist()
    bad = find_bad_images(root, paths, workers=workers, progress=progress)
    if not bad:
        return table, []
    if not skip_bad:
        raise BadImagesError(Path(root), bad, len(paths))
    bad_paths = {path for path, _ in bad}
    return table.filter(pa.array([path not in bad_paths for path in paths])), bad


def load_image(root: str | Path, path: str) -> Image.Image:
    """The image at root/path as RGB (RegDB's thermal images and SYSU's infrared ones included)."""
    with Image.open(Path(root) / path) as image:
        return image.convert("RGB")


class ImageDataset(torch.utils.data.Dataset):
    """Images by position: returns (transform(image), index), the index naming the manifest row.

    A key is an index (evaluation: the transform's draws come from whatever state torch's
    generator is in) or an (index, seed) pair (training: the draws come from torch's CPU generator
    seeded with seed, the caller's state restored afterwards). Seeded keys give a sample the same
    views in any process and after any other sample, so a run's augmentation does not depend on
    how many workers or loader processes share it (seeds from transforms.sample_seed).
    """

    def __init__(self, root: str | Path, paths: Sequence[str], transform: Callable,
                 cache: Sequence[Image.Image] | None = None) -> None:
        if cache is not None and len(cache) != len(paths):
            raise ValueError(f"the image cache holds {len(cache)} images for {len(paths)} paths")
        self.root = Path(root)
        self.cache = cache  # the images of `paths` already decoded (data/image_cache.py), or None
        # A fixed-width string array, not a list: forked DataLoader workers would otherwise copy
        # the pages of every path string as they touch its reference count.
        self.paths = np.asarray(list(paths), dtype=str)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        if not isinstance(key, (tuple, list)):
            return self.transform(self._image(key)), key
        index, seed = (int(k) for k in key)
        image = self._image(index)
        with torch.random.fork_rng(devices=[]):  # CPU generator only; the transforms run on CPU
            # torch.manual_seed's CPU part alone: it would also seed (lazily) every accelerator
            # generator, at 100x the cost (~120 us a sample).
            torch.default_generator.manual_seed(seed)
            return self.transform(image), index

    def _image(self, index: int) -> Image.Image:
        if self.cache is not None:
            return self.cache[index]
        return load_image(self.root, str(self.paths[index]))
