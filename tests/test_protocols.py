"""Protocols on tiny synthetic manifests: gallery draws, camera rules, result structure."""

import random

import numpy as np
import pytest

from dmdl_dist.data.manifest import INFRARED, VISIBLE, columns, make_manifest
from dmdl_dist.eval.protocols import (
    evaluate_trials,
    format_table,
    llcm_trials,
    regdb_trial,
    sysu_trials,
)

SYSU_CAM_MODALITY = {1: VISIBLE, 2: VISIBLE, 3: INFRARED, 4: VISIBLE, 5: VISIBLE, 6: INFRARED}


def _shuffled_manifest(rows, seed=0):
    """Rows (path, pid, camid, modality, split) in a random order, so nothing relies on row order."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return make_manifest(*zip(*rows, strict=True))


def _sysu_manifest(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for pid in (12, 3, 7, 100, 45):
        for cam, modality in SYSU_CAM_MODALITY.items():
            count = 1 + rng.integers(0, 4) if cam == 1 else rng.integers(0, 4)  # cam1 always present
            for k in rng.choice(20, size=count, replace=False):
                rows.append((f"cam{cam}/{pid:04d}/{k + 1:04d}.jpg", pid, cam, modality, "test"))
    rows.append(("cam3/0999/0001.jpg", 999, 3, INFRARED, "train"))  # must never be used
    rows.append(("cam1/0999/0001.jpg", 999, 1, VISIBLE, "train"))
    return _shuffled_manifest(rows, seed)


def _llcm_manifest(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    cams = {VISIBLE: range(1, 10), INFRARED: (1, 2, 4, 5, 6, 7, 8, 9)}
    folders = {VISIBLE: "test_vis", INFRARED: "test_nir"}
    for pid in (8, 21, 5):
        for modality, cam_list in cams.items():
            for cam in cam_list:
                for k in range(rng.integers(0, 3) + (cam == 9)):  # cam 9 always present
                    rows.append((f"{folders[modality]}/cam{cam}/{pid:04d}/{k:04d}.jpg", pid, cam, modality, "test"))
    return _shuffled_manifest(rows, seed)


def _reference_gallery(paths, pids, cam_dirs, trial):
    """The dataset authors' draw: random.seed, sorted ids, cams in order, choice of sorted files per folder."""
    folders = {}
    for path in paths:
        folder, name = path.rsplit("/", 1)
        folders.setdefault(folder, []).append(name)
    state = random.getstate()
    random.seed(trial)
    picked = []
    for pid in sorted(f"{p:04d}" for p in pids):
        for cam_dir in cam_dirs:
            folder = f"{cam_dir}/{pid}"
            if folder in folders:
                picked.append(random.choice(sorted(f"{folder}/{name}" for name in folders[folder])))
    random.setstate(state)
    return picked


def _one_hot_features(manifest):
    pids = columns(manifest)["pid"]
    uniq = np.unique(pids)
    return (pids[:, None] == uniq[None, :]).astype(np.float32)  # N x P, unit rows


@pytest.mark.parametrize("mode, cams", [("all", (1, 2, 4, 5)), ("indoor", (1, 2))])
def test_sysu_gallery_draw_matches_reference(mode, cams):
    manifest = _sysu_manifest()
    cols = columns(manifest)
    test = cols["split"] == "test"
    trials = sysu_trials(manifest, mode=mode, n_trials=4)
    assert len(trials) == 4
    for t, trial in enumerate(trials):
        expected = _reference_gallery(cols["path"][test], np.unique(cols["pid"][test]), [f"cam{c}" for c in cams], t)
        assert list(cols["path"][trial.gallery]) == expected
        assert set(cols["camid"][trial.gallery]) <= set(cams)
    assert len({tuple(tr.gallery) for tr in trials}) > 1  # trials draw different images
    query = trials[0].query
    assert set(cols["camid"][query]) == {3, 6}
    assert np.all(cols["split"][query] == "test")
    assert len(query) == int(np.sum(test & np.isin(cols["camid"], (3, 6))))


def test_sysu_excludes_cam2_for_cam3_queries_only():
    rows = [
        ("cam1/0001/0001.jpg", 1, 1, VISIBLE, "test"),
        ("cam2/0002/0001.jpg", 2, 2, VISIBLE, "test"),
        ("cam3/0001/0001.jpg", 1, 3, INFRARED, "test"),
        ("cam6/0001/0001.jpg", 1, 6, INFRARED, "test"),
    ]
    manifest = make_manifest(*zip(*rows, strict=True))
    # Both queries are closest to the wrong id in cam2 (sim 1.0), then to their own id in cam1 (0.6).
    features = np.array([[0.6, 0.8], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    out = evaluate_trials(features, manifest, sysu_trials(manifest, n_trials=1))["mean"]
    # cam3 query: cam2 discarded -> hit at rank 1, AP 1. cam6 query: hit at rank 2, AP 1/2, INP 1/2.
    assert out["rank1"] == pytest.approx(50.0)
    assert out["rank5"] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx(75.0)
    assert out["mINP"] == pytest.approx(75.0)


@pytest.mark.parametrize("direction, gallery_mod", [("v2i", INFRARED), ("i2v", VISIBLE)])
def test_llcm_gallery_draw_matches_reference(direction, gallery_mod):
    manifest = _llcm_manifest()
    cols = columns(manifest)
    folder = "test_nir" if gallery_mod == INFRARED else "test_vis"
    cam_dirs = [f"{folder}/cam{c}" for c in sorted(set(cols["camid"][cols["modality"] == gallery_mod]))]
    trials = llcm_trials(manifest, direction, n_trials=3)
    for t, trial in enumerate(trials):
        expected = _reference_gallery(cols["path"], np.unique(cols["pid"]), cam_dirs, t)
        assert list(cols["path"][trial.gallery]) == expected
        assert np.all(cols["modality"][trial.gallery] == gallery_mod)
    assert np.all(cols["modality"][trials[0].query] == 1 - gallery_mod)
    assert len(trials[0].query) == int(np.sum(cols["modality"] == 1 - gallery_mod))


def test_llcm_excludes_same_id_same_cam():
    rows = [
        ("test_vis/cam1/0001/0000.jpg", 1, 1, VISIBLE, "test"),  # query a
        ("test_vis/cam3/0002/0000.jpg", 2, 3, VISIBLE, "test"),  # query b
        ("test_nir/cam1/0001/0000.jpg", 1, 1, INFRARED, "test"),  # same id and cam as query a
        ("test_nir/cam2/0001/0000.jpg", 1, 2, INFRARED, "test"),
        ("test_nir/cam4/0002/0000.jpg", 2, 4, INFRARED, "test"),
    ]
    manifest = make_manifest(*zip(*rows, strict=True))
    features = np.array([[1, 0], [0.8, 0.6], [1, 0], [0.6, 0.8], [0.8, 0.6]], dtype=np.float32)
    out = evaluate_trials(features, manifest, llcm_trials(manifest, "v2i", n_trials=2))
    # Query a: its cam1 twin (sim 1) is discarded; ranked pid 2 (0.8), pid 1 (0.6) -> miss, AP 1/2.
    # Query b: pid 2 in cam4 (sim 1) is a different camera, kept -> hit, AP 1.
    for metrics in out["trials"]:
        assert metrics["rank1"] == pytest.approx(50.0)
        assert metrics["mAP"] == pytest.approx(75.0)
        assert metrics["mINP"] == pytest.approx(75.0)


def test_regdb_trial_uses_all_test_images_both_ways():
    rows = [(f"Visible/{p}/{k}.bmp", p, 1, VISIBLE, "test") for p in (4, 9) for k in range(3)]
    rows += [(f"Thermal/{p}/{k}.bmp", p, 2, INFRARED, "test") for p in (4, 9) for k in range(2)]
    rows += [("Visible/1/0.bmp", 1, 1, VISIBLE, "train")]
    manifest = make_manifest(*zip(*rows, strict=True))
    v2i, i2v = regdb_trial(manifest, "v2i"), regdb_trial(manifest, "i2v")
    assert np.array_equal(v2i.query, np.arange(6)) and np.array_equal(v2i.gallery, np.arange(6, 10))
    assert np.array_equal(i2v.query, v2i.gallery) and np.array_equal(i2v.gallery, v2i.query)
    assert v2i.exclude is None and not v2i.dedup_ranks
    out = evaluate_trials(_one_hot_features(manifest), manifest, [v2i])
    assert out["mean"]["rank1"] == 100.0 and out["mean"]["mAP"] == pytest.approx(100.0)


def test_perfect_features_and_result_structure():
    manifest = _sysu_manifest(seed=3)
    features = _one_hot_features(manifest)
    for trials in (sysu_trials(manifest, "all", 3), sysu_trials(manifest, "indoor", 3)):
        out = evaluate_trials(features, manifest, trials)
        assert set(out) == {"mean", "trials"} and len(out["trials"]) == 3
        keys = {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}
        assert set(out["mean"]) == keys and all(set(m) == keys for m in out["trials"])
        assert out["mean"]["rank1"] == pytest.approx(100.0)
        assert out["mean"]["mAP"] == pytest.approx(100.0)
        assert out["mean"]["mINP"] == pytest.approx(100.0)
    llcm = _llcm_manifest(seed=1)
    out = evaluate_trials(_one_hot_features(llcm), llcm, llcm_trials(llcm, "i2v", 2))
    assert out["mean"]["rank1"] == pytest.approx(100.0) and out["mean"]["mAP"] == pytest.approx(100.0)


def test_mean_is_average_of_trials():
    manifest = _sysu_manifest(seed=5)
    features = np.random.default_rng(0).standard_normal((manifest.num_rows, 8)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    out = evaluate_trials(features, manifest, sysu_trials(manifest, n_trials=4))
    for key, value in out["mean"].items():
        assert value == pytest.approx(np.mean([m[key] for m in out["trials"]]))


def test_missing_cameras_or_modalities_raise():
    visible_only = make_manifest(["cam1/0001/0001.jpg"], [1], [1], [VISIBLE], ["test"])
    with pytest.raises(ValueError, match="query cameras"):
        sysu_trials(visible_only)
    with pytest.raises(ValueError, match="infrared test images"):
        llcm_trials(visible_only, "v2i")
    with pytest.raises(ValueError, match="infrared test images"):
        regdb_trial(visible_only, "i2v")
    with pytest.raises(ValueError, match="direction"):
        regdb_trial(visible_only, "rgb2ir")
    with pytest.raises(ValueError, match="mode"):
        sysu_trials(_sysu_manifest(), mode="outdoor")
    with pytest.raises(ValueError, match="manifest rows"):
        evaluate_trials(np.zeros((3, 2)), visible_only, [])


def test_format_table():
    text = format_table(
        {
            "sysu all": {"mean": {"rank1": 56.25, "rank5": 80, "rank10": 88, "rank20": 95, "mAP": 51.4, "mINP": 37}},
            "regdb v2i": {"rank1": 90.0, "rank5": 95, "rank10": 97, "rank20": 99, "mAP": 85.123, "mINP": 77},
        }
    )
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["protocol", "R1", "R5", "R10", "R20", "mAP", "mINP"]
    assert lines[1].startswith("sysu all") and "56.25" in lines[1] and "51.40" in lines[1]
    assert "85.12" in lines[2]
    assert len({len(line) for line in lines}) == 1  # fixed width
