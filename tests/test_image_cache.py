"""Training images decoded and resized once: the same views and features as reading the files."""

import numpy as np
import pytest
import torch
from PIL import Image

from dmdl_dist.config import load_config
from dmdl_dist.data import transforms as T
from dmdl_dist.data.image_cache import ResizedImages, cache_bytes
from dmdl_dist.data.images import ImageDataset
from dmdl_dist.data.manifest import INFRARED, VISIBLE
from dmdl_dist.engine.data import RunData, cache_images


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        height, width = (150, 70) if i % 2 else (128, 64)
        pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        if i >= 3:  # infrared files repeat one plane
            pixels = np.repeat(pixels[:, :, :1], 3, axis=2)
        Image.fromarray(pixels).save(tmp_path / f"{i}.jpg", quality=90)
        paths.append(f"{i}.jpg")
    return tmp_path, paths


@pytest.mark.parametrize("modality", [VISIBLE, INFRARED])
def test_cached_images_give_the_files_training_views_bit_for_bit(folder, modality):
    root, paths = folder
    cache = ResizedImages.load(root, paths, 64, 32)
    transform = T.train_views(modality, 64, 32, pad=2)
    from_files, from_cache = ImageDataset(root, paths, transform), ImageDataset(root, paths, transform, cache=cache)
    for i in range(len(paths)):
        (a1, a2), ia = from_files[(i, 1000 + i)]
        (b1, b2), ib = from_cache[(i, 1000 + i)]
        assert ia == ib == i
        assert torch.equal(a1, b1) and torch.equal(a2, b2), i


def test_cached_images_give_the_files_test_features_and_slices_share_the_pixels(folder):
    root, paths = folder
    cache = ResizedImages.load(root, paths, 64, 32)
    assert cache.pixels.shape == (6, 64, 32, 3) and len(cache) == 6
    transform = T.test_transform(64, 32)
    for i in range(len(paths)):
        assert torch.equal(ImageDataset(root, paths, transform)[i][0],
                           ImageDataset(root, paths, transform, cache=cache)[i][0])
    part = cache.slice(2, 5)
    assert len(part) == 3 and np.shares_memory(part.pixels, cache.pixels)
    assert np.array_equal(np.asarray(part[0]), cache.pixels[2])
    with pytest.raises(ValueError, match="holds 3 images for 6 paths"):
        ImageDataset(root, paths, transform, cache=part)


def test_the_run_caches_its_training_images_only_within_data_cache_mb(folder):
    root, paths = folder
    data = RunData(root, None, [paths[:3], paths[3:]], [], [], None, None)
    cfg = load_config("tiny", overrides=["data.height=64", "data.width=32", "data.cache_mb=0"])
    assert not cache_images(cfg, data) and data.train_images is None and data.train_cache(0) is None
    assert cache_bytes(6, 64, 32) == 6 * 64 * 32 * 3
    cfg.data.cache_mb = 1
    assert cache_images(cfg, data)
    assert [len(c) for c in data.train_images] == [3, 3] and data.train_cache(1) is data.train_images[1]
    assert np.array_equal(data.train_images[1].pixels[0],
                          np.asarray(T.resize_step(64, 32)(Image.open(root / paths[3]).convert("RGB"))))
