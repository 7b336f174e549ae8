import itertools
import math
import pickle

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from dmdl_dist.data import transforms as T
from dmdl_dist.data.images import ImageDataset
from dmdl_dist.data.manifest import INFRARED, VISIBLE
from dmdl_dist.data.reference_views import reference_views

MEAN = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
# The release's maps for output channels 0, 1, 2 (ChannelAug.PseudoColor_new: 5/17, 14/0, 21/2).
RELEASE_MAPS = (
    (cv2.COLORMAP_OCEAN, cv2.COLORMAP_CIVIDIS),
    (cv2.COLORMAP_INFERNO, cv2.COLORMAP_AUTUMN),
    (cv2.COLORMAP_DEEPGREEN, cv2.COLORMAP_JET),
)


def _image(height=150, width=70, gray=False, seed=0):
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 1 if gray else 3)) * 255).astype(np.uint8)
    return Image.fromarray(np.repeat(pixels, 3, axis=2) if gray else pixels)


def _normalise(pil):
    return (torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1) - MEAN) / STD


def _equal_channels(x, atol=1e-6):
    return torch.allclose(x[0], x[1], atol=atol) and torch.allclose(x[1], x[2], atol=atol)


def _seeded(transform, image, seed):
    torch.manual_seed(seed)
    return transform(image)


def _within(count, n, p, sigmas=4.5):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("modality", [VISIBLE, INFRARED])
def test_train_views_give_two_tensors_of_the_asked_size(modality):
    torch.manual_seed(0)
    transform = T.train_views(modality, 64, 32, erase_p=0.5, gray_p=0.5, erase_max_area=0.5)
    views = transform(_image(gray=modality == INFRARED))
    assert len(views) == 2
    for view in views:
        assert type(view) is torch.Tensor and view.shape == (3, 64, 32) and view.dtype == torch.float32
    assert not torch.equal(views[0], views[1])


def test_single_and_test_transforms():
    image = _image()
    assert T.single_view(VISIBLE, 64, 32, erase_p=0.5, erase_max_area=0.5)(image).shape == (3, 64, 32)
    out = T.test_transform(64, 32)(image)
    assert out.shape == (3, 64, 32)
    assert torch.equal(out, T.test_transform(64, 32)(image))  # deterministic


def test_test_transform_resizes_bicubic():
    image = _image()
    expected = _normalise(image.resize((32, 64), Image.BICUBIC))
    assert torch.allclose(T.test_transform(64, 32)(image), expected, atol=1e-6)


@pytest.mark.parametrize("pad", [T.PAD, 2])
def test_training_view_is_a_flipped_or_not_crop_of_the_zero_padded_bicubic_resize(pad):
    image = _image()
    padded = np.pad(np.asarray(image.resize((32, 64), Image.BICUBIC)), ((pad, pad), (pad, pad), (0, 0)))
    full = _normalise(Image.fromarray(padded))  # 3 x (64 + 2 pad) x (32 + 2 pad)
    crops = {}
    for top, left in itertools.product(range(2 * pad + 1), range(2 * pad + 1)):
        crop = full[:, top : top + 64, left : left + 32]
        crops[top, left, False], crops[top, left, True] = crop, crop.flip(-1)
    found = []
    for seed in range(12):
        torch.manual_seed(seed)
        view, _ = T.train_views(VISIBLE, 64, 32, erase_p=0.0, pad=pad)(image)
        matches = [key for key, crop in crops.items() if torch.allclose(view, crop, atol=1e-5)]
        assert len(matches) >= 1, f"seed {seed}: view 1 is no crop of the image padded by {pad}"
        found.append(matches[0])
    assert len({key[:2] for key in found}) > 1 and {key[2] for key in found} == {False, True}


def test_erasing_comes_after_normalisation_and_boxes_have_the_asked_area():
    image = _image()
    height, width, max_area = 64, 32, 0.1
    areas, erased = [], []
    for seed in range(300):
        plain = _seeded(T.single_view(VISIBLE, height, width, erase_p=0.0, erase_max_area=max_area), image, seed)
        out = _seeded(T.single_view(VISIBLE, height, width, erase_p=1.0, erase_max_area=max_area), image, seed)
        changed = (plain != out).any(0)  # H x W
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert changed.sum() == h * w, "the erased pixels form one box"
        box = (slice(None), slice(int(rows[0]), int(rows[0]) + h), slice(int(cols[0]), int(cols[0]) + w))
        assert (plain[box] != out[box]).all(), "every channel of the box is erased"
        assert torch.equal(out[:, ~changed], plain[:, ~changed]), "outside the box, the normalised image"
        # h and w are rounded from a drawn area a: a lies in [(h - .5)(w - .5), (h + .5)(w + .5)].
        low, high = (h - 0.5) * (w - 0.5), (h + 0.5) * (w + 0.5)
        assert low <= max_area * height * width and high >= 0.02 * height * width
        areas.append(h * w / (height * width))
        erased.append(out[box].flatten())
    values = torch.cat(erased)
    assert abs(float(values.mean())) < 0.03 and abs(float(values.std()) - 1) < 0.03  # N(0, 1), not normalised N(0, 1)
    assert max(areas) > 0.08 and min(areas) < 0.03


def test_erasing_probability_and_the_larger_area_of_stage_2():
    torch.manual_seed(0)
    erase = T.RandomErasing(0.5, max_area=0.1)
    count = sum(bool((erase(torch.zeros(3, 64, 32)) != 0).any()) for _ in range(400))
    assert _within(count, 400, 0.5)
    wide = T.RandomErasing(1.0, max_area=0.6)
    largest = max(float((wide(torch.zeros(3, 288, 144)) != 0).any(0).float().mean()) for _ in range(200))
    assert 0.5 < largest <= 0.61


def test_infrared_view_1_copies_a_channel_three_times_in_four_and_grays_one_in_eight():
    torch.manual_seed(0)
    img = torch.randn(3, 4, 5)
    gray = sum(w * img[c] for c, w in enumerate(T.GRAY_WEIGHTS))
    op, n = T.ChannelAdaptiveGray(gray_p=0.5), 2000
    counts = {"copy0": 0, "copy1": 0, "copy2": 0, "gray": 0, "unchanged": 0}
    for _ in range(n):
        out = op(img)
        kinds = [f"copy{c}" for c in range(3) if torch.equal(out, img[c].expand(3, -1, -1))]
        kinds += ["gray"] * torch.allclose(out, gray.expand(3, -1, -1), atol=1e-6)
        kinds += ["unchanged"] * torch.equal(out, img)
        assert len(kinds) == 1, kinds
        counts[kinds[0]] += 1
    copies = counts["copy0"] + counts["copy1"] + counts["copy2"]
    assert _within(copies, n, 3 / 4) and _within(counts["gray"], n, 1 / 8) and _within(counts["unchanged"], n, 1 / 8)
    assert all(_within(counts[f"copy{c}"], n, 1 / 4) for c in range(3))


def test_visible_view_2_always_copies_one_channel_never_gray():
    torch.manual_seed(0)
    img = torch.randn(3, 4, 5)
    counts = [0, 0, 0]
    for _ in range(600):
        out = T.ChannelExchange()(img)
        sources = [c for c in range(3) if torch.equal(out, img[c].expand(3, -1, -1))]
        assert len(sources) == 1
        counts[sources[0]] += 1
    assert all(_within(count, 600, 1 / 3) for count in counts)


def test_channel_steps_run_after_erasing_on_the_normalised_view():
    image = _image(gray=True)
    for seed in range(20):
        torch.manual_seed(seed)
        _, visible_second = T.train_views(VISIBLE, 64, 32, erase_p=1.0)(image)
        infrared_first, _ = T.train_views(INFRARED, 64, 32, erase_p=1.0, gray_p=1.0)(image)
        assert _equal_channels(visible_second) and _equal_channels(infrared_first)


def test_pseudo_colour_channels_are_the_release_opencv_maps_for_all_eight_choices():
    assert T.PSEUDO_COLOUR_MAPS == RELEASE_MAPS
    plane = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.repeat(plane[..., None], 3, axis=2)
    outputs = set()
    for maps in itertools.product(*RELEASE_MAPS):
        out = T.pseudo_colour(rgb, maps)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        for channel, colour_map in enumerate(maps):
            np.testing.assert_array_equal(out[..., channel], cv2.applyColorMap(rgb, colour_map)[..., channel])
            np.testing.assert_array_equal(out[..., channel], cv2.applyColorMap(plane, colour_map)[..., channel])
        outputs.add(out.tobytes())
    assert len(outputs) == 8


def test_pseudo_colour_draws_each_of_the_eight_combinations():
    plane = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.repeat(plane[..., None], 3, axis=2)
    expected = {T.pseudo_colour(rgb, maps).tobytes(): maps for maps in itertools.product(*RELEASE_MAPS)}
    seen = set()
    for seed in range(100):
        torch.manual_seed(seed)
        out = np.asarray(T.PseudoColour()(Image.fromarray(rgb)))
        seen.add(expected[out.tobytes()])
    assert len(seen) == 8


def test_sample_seed_is_a_63_bit_function_of_all_five_numbers():
    base = (7, 3, 120, 45, 1)
    seed = T.sample_seed(*base)
    assert isinstance(seed, int) and 0 <= seed < 2**63 and seed == T.sample_seed(*base)
    for i in range(5):
        moved = list(base)
        moved[i] += 1
        assert T.sample_seed(*moved) != seed


def _write_images(root, n=3):
    paths = []
    for i in range(n):
        path = f"img{i}.png"
        _image(40, 20, gray=i % 2 == 1, seed=i).save(root / path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("modality", [VISIBLE, INFRARED])
def test_seeded_keys_give_the_same_views_in_any_loader_process(tmp_path, modality):
    dataset = ImageDataset(tmp_path, _write_images(tmp_path), T.train_views(modality, 32, 16, erase_p=0.5))
    batches = [[(0, 11), (1, 12)], [(2, 13), (0, 14)], [(1, 12), (0, 11)]]

    def load(workers):
        return list(DataLoader(dataset, batch_sampler=batches, num_workers=workers))

    inline, spawned = load(0), load(2)
    for (views_a, index_a), (views_b, index_b) in zip(inline, spawned, strict=True):
        assert torch.equal(index_a, index_b)
        assert all(torch.equal(a, b) for a, b in zip(views_a, views_b, strict=True))
    (first, second), index = inline[0]
    assert first.shape == (2, 3, 32, 16) and index.tolist() == [0, 1]
    again, _ = inline[2]
    assert torch.equal(first[0], again[0][1]) and torch.equal(second[0], again[1][1])  # (0, 11) anywhere
    other, _ = inline[1]
    assert not torch.equal(first[0], other[0][1])  # (0, 14): another seed, other views


def test_seeded_keys_leave_the_callers_generator_alone(tmp_path):
    dataset = ImageDataset(tmp_path, _write_images(tmp_path), T.train_views(VISIBLE, 32, 16))
    torch.manual_seed(3)
    state = torch.get_rng_state()
    views, index = dataset[(np.int64(1), 99)]
    assert index == 1 and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(views, dataset[(1, 99)][0], strict=True))
    plain, index = dataset[2]  # evaluation keys: no seeding, the generator moves on
    assert index == 2 and not torch.equal(torch.get_rng_state(), state)


def test_views_pickle_for_dataloader_workers():
    views = pickle.loads(pickle.dumps(T.train_views(INFRARED, 64, 32)))
    assert views(_image(gray=True))[1].shape == (3, 64, 32)


def test_unknown_modality_and_bad_probabilities_are_refused():
    with pytest.raises(ValueError, match="modality"):
        T.train_views(2, 64, 32)
    with pytest.raises(ValueError, match="erased area"):
        T.single_view(VISIBLE, 64, 32, erase_max_area=0.01)
    with pytest.raises(ValueError, match="gray probability"):
        T.train_views(INFRARED, 64, 32, gray_p=1.5)


@pytest.mark.parametrize("modality", [VISIBLE, INFRARED])
@pytest.mark.parametrize("pad", [0, 2])
def test_views_are_torchvisions_pipeline_with_the_same_draws(modality, pad):
    ours = T.train_views(modality, 64, 32, erase_p=0.5, gray_p=0.5, pad=pad)
    oracle = reference_views(modality, 64, 32, erase_p=0.5, gray_p=0.5, pad=pad)
    image = _image(64, 32, gray=modality == INFRARED)
    worst = 0.0
    for seed in range(40):
        for got, expected in zip(_seeded(ours, image, seed), _seeded(oracle, image, seed), strict=True):
            assert got.shape == expected.shape == (3, 64, 32)
            worst = max(worst, float((got - expected).abs().max()))
    assert worst < 1e-4, f"largest difference {worst} (normalised units)"


def test_colour_jitter_matches_torchvision_on_float_images_step_by_step():
    rng = np.random.default_rng(1)
    x = rng.random((64, 32, 3), dtype=np.float32)
    tensor = torch.from_numpy(x.transpose(2, 0, 1).copy())
    for name, factor, reference in [("brightness", 1.4, v2.functional.adjust_brightness),
                                    ("contrast", 0.6, v2.functional.adjust_contrast),
                                    ("saturation", 1.5, v2.functional.adjust_saturation),
                                    ("hue", -0.37, v2.functional.adjust_hue), ("hue", 0.21, v2.functional.adjust_hue)]:
        step = T._JITTER_STEPS[("brightness", "contrast", "saturation", "hue").index(name)]
        got = torch.from_numpy(step(x, factor).transpose(2, 0, 1).copy())
        assert torch.allclose(got, reference(tensor, factor), atol=2e-5), name


def test_pseudo_colour_equals_opencv_on_colour_images_too():
    rgb = np.asarray(_image(40, 24))
    for maps in itertools.product(*RELEASE_MAPS):
        for channel, colour_map in enumerate(maps):
            np.testing.assert_array_equal(T.pseudo_colour(rgb, maps)[..., channel],
                                          cv2.applyColorMap(rgb, colour_map)[..., channel])
