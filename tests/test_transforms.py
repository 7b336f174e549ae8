import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dmdl_dist.data import transforms as T
from dmdl_dist.data.manifest import INFRARED, VISIBLE

MEAN = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(T.IMAGENET_STD).view(3, 1, 1)


def _image(height=150, width=70, gray=False, seed=0):
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 1 if gray else 3)) * 255).astype(np.uint8)
    return Image.fromarray(np.repeat(pixels, 3, axis=2) if gray else pixels)


def _unnormalise(x):
    return x * STD + MEAN


def _equal_channels(x, atol=1e-5):
    return torch.allclose(x[0], x[1], atol=atol) and torch.allclose(x[1], x[2], atol=atol)


@pytest.mark.parametrize("modality", [VISIBLE, INFRARED])
def test_train_views_give_two_tensors_of_the_asked_size(modality):
    torch.manual_seed(0)
    views = T.train_views(modality, 64, 32)(_image(gray=modality == INFRARED))
    assert len(views) == 2
    for view in views:
        assert view.shape == (3, 64, 32) and view.dtype == torch.float32
    assert not torch.equal(views[0], views[1])


def test_single_and_test_transforms():
    image = _image()
    assert T.single_view(VISIBLE, 64, 32)(image).shape == (3, 64, 32)
    out = T.test_transform(64, 32)(image)
    assert out.shape == (3, 64, 32)
    assert torch.equal(out, T.test_transform(64, 32)(image))  # deterministic


def test_channel_exchange_makes_channels_equal_and_varies_the_source():
    img = torch.stack([torch.full((4, 3), v) for v in (0.2, 0.5, 0.8)])
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        out = T.ChannelExchange()(img)
        assert out.shape == img.shape and _equal_channels(out)
        seen.add(round(float(out[0, 0, 0]), 4))
    luma = round(sum(w * v for w, v in zip(T.LUMA, (0.2, 0.5, 0.8), strict=True)), 4)
    assert seen == {0.2, 0.5, 0.8, luma}


def test_channel_adaptive_gray_is_a_convex_mix():
    torch.manual_seed(0)
    img = torch.rand(3, 8, 4)
    out = T.ChannelAdaptiveGray(p=1.0)(img)
    assert _equal_channels(out)
    assert torch.all(out[0] >= img.amin(0) - 1e-6) and torch.all(out[0] <= img.amax(0) + 1e-6)
    assert torch.equal(T.ChannelAdaptiveGray(p=0.0)(img), img)


def test_pseudo_colour_colours_an_intensity_ramp():
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 32).expand(3, 4, 32)
    out = T.PseudoColour()(ramp)
    assert out.shape == ramp.shape
    assert out.min() >= 0 and out.max() <= 1
    assert not _equal_channels(out, atol=1e-2)
    assert torch.equal(out[:, 0], out[:, 3])  # the same intensity gets the same colour


def test_infrared_gray_view_and_visible_exchange_view_have_equal_channels_before_normalising():
    torch.manual_seed(0)
    image = _image()
    infrared_first, _ = T.train_views(INFRARED, 64, 32, gray_p=1.0)(image)
    _, visible_second = T.train_views(VISIBLE, 64, 32, erase_p=0.0)(image)
    assert _equal_channels(_unnormalise(infrared_first))
    assert _equal_channels(_unnormalise(visible_second))


def test_views_pickle_for_dataloader_workers():
    views = pickle.loads(pickle.dumps(T.train_views(INFRARED, 64, 32)))
    assert views(_image(gray=True))[1].shape == (3, 64, 32)


def test_unknown_modality_is_refused():
    with pytest.raises(ValueError, match="modality"):
        T.train_views(2, 64, 32)
