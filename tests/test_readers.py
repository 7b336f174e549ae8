"""Readers of the raw data set layouts, the manifest cache, and image verification, on tiny trees."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmdl_dist.data import manifest
from dmdl_dist.data.datasets import DatasetLayoutError, load_manifest, manifest_cache_path
from dmdl_dist.data.images import BadImagesError, ImageDataset, load_image, verify_images
from dmdl_dist.data.llcm import read_llcm
from dmdl_dist.data.regdb import read_regdb, regdb_trials_available
from dmdl_dist.data.sysu import read_sysu


def write_image(path: Path, value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 16), color=value if mode == "L" else (value, 50, 200)).save(path)


def make_sysu(root: Path) -> Path:
    """ids 1, 2 train; 3 val; 4 test; 9 exists on disk but is listed nowhere."""
    (root / "exp").mkdir(parents=True)
    (root / "exp" / "train_id.txt").write_text("1,2\n")
    (root / "exp" / "val_id.txt").write_text("3")
    (root / "exp" / "test_id.txt").write_text("4")
    for cam in range(1, 7):
        for pid in (1, 2, 3, 4, 9):
            if cam == 5 and pid == 2:  # not every id is seen by every camera
                continue
            for k in (1, 2):
                write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg")
    return root


def make_regdb(root: Path, trials: tuple[int, ...] = (1, 2)) -> Path:
    for pid in range(4):
        for k in range(2):
            write_image(root / "Visible" / f"Visible_male_{pid}" / f"v_{k}.bmp")
            write_image(root / "Thermal" / f"Thermal_male_{pid}" / f"t_{k}.bmp", mode="L")
    (root / "idx").mkdir()
    for t in trials:
        train, test = ([0, 1], [2, 3]) if t == 1 else ([2, 3], [0, 1])
        for split, pids in (("train", train), ("test", test)):
            for stem, folder, prefix in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
                rows = [(label, pid, k) for label, pid in enumerate(pids) for k in range(2)]
                lines = [f"{folder}/{folder}_male_{pid}/{prefix}_{k}.bmp {label}" for label, pid, k in rows]
                (root / "idx" / f"{split}_{stem}_{t}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_llcm(root: Path) -> Path:
    """Train: visible cam1/cam2, nir cam4. Test ids 5 and 6 (6 in a folder named "6"); 7 is not a test id."""
    write_image(root / "train_vis" / "cam1" / "0001" / "a.jpg")
    write_image(root / "train_vis" / "cam2" / "0001" / "b.jpg")
    write_image(root / "train_nir" / "cam4" / "0001" / "c.jpg")
    for cam in (1, 9):
        write_image(root / "test_vis" / f"cam{cam}" / "0005" / "x.jpg")
        write_image(root / "test_vis" / f"cam{cam}" / "0007" / "y.jpg")
    write_image(root / "test_nir" / "cam2" / "0005" / "z.jpg")
    write_image(root / "test_nir" / "cam8" / "6" / "w.jpg")
    (root / "idx").mkdir()
    (root / "idx" / "test_id.txt").write_text("5,6")
    (root / "idx" / "train_vis.txt").write_text("train_vis/cam1/0001/a.jpg 0\ntrain_vis/cam2/0001/b.jpg 0\n")
    (root / "idx" / "train_nir.txt").write_text("train_nir/cam4/0001/c.jpg 0\n")
    return root


def test_sysu_rows_splits_modalities(tmp_path):
    table = read_sysu(make_sysu(tmp_path))
    assert table.schema.equals(manifest.SCHEMA)
    cols = manifest.columns(table)
    assert list(cols["path"]) == sorted(cols["path"])
    assert "cam3/0001/0001.jpg" in set(cols["path"])
    assert 9 not in set(cols["pid"])  # unlisted ids are left out
    assert table.num_rows == (6 * 4 - 1) * 2  # 6 cams x ids 1-4, less cam5/id 2; 2 images each
    assert set(cols["split"][cols["pid"] != 4]) == {"train"} and set(cols["split"][cols["pid"] == 4]) == {"test"}
    infrared = np.isin(cols["camid"], [3, 6])
    assert (cols["modality"][infrared] == manifest.INFRARED).all()
    assert (cols["modality"][~infrared] == manifest.VISIBLE).all()
    cam_from_path = [int(p.split("/")[0][3:]) for p in cols["path"]]
    assert cam_from_path == list(cols["camid"])


def test_sysu_holdout_val(tmp_path):
    cols = manifest.columns(read_sysu(make_sysu(tmp_path), holdout_val=True))
    assert set(cols["split"][cols["pid"] == 3]) == {"val"}
    assert set(cols["split"][np.isin(cols["pid"], [1, 2])]) == {"train"}


def test_regdb_trials_and_labels(tmp_path):
    root = make_regdb(tmp_path)
    assert regdb_trials_available(root) == [1, 2]
    cols = manifest.columns(read_regdb(root, trial=2))
    assert len(cols["path"]) == 4 * 2 * 2
    test = cols["split"] == "test"
    # trial 2 tests on the folders of people 0 and 1, under the labels the file gives them
    assert {p.split("/")[1][-1] for p in cols["path"][test]} == {"0", "1"}
    assert set(cols["pid"][test]) == {0, 1} and set(cols["pid"][~test]) == {0, 1}
    thermal = np.char.startswith(cols["path"].astype(str), "Thermal/")
    assert (cols["modality"][thermal] == manifest.INFRARED).all() and (cols["camid"][thermal] == 2).all()
    assert (cols["modality"][~thermal] == manifest.VISIBLE).all() and (cols["camid"][~thermal] == 1).all()
    trial1 = manifest.columns(read_regdb(root, trial=1))
    assert set(trial1["path"][trial1["split"] == "test"]) == set(cols["path"][~test])


def test_regdb_missing_trial_names_file_and_trials(tmp_path):
    root = make_regdb(tmp_path, trials=(1,))
    with pytest.raises(DatasetLayoutError) as err:
        read_regdb(root, trial=3)
    message = str(err.value)
    assert str(root / "idx" / "train_visible_3.txt") in message
    assert "test_thermal_1.txt" in message and "[1]" in message


def test_llcm_camids_and_test_ids(tmp_path):
    cols = manifest.columns(read_llcm(make_llcm(tmp_path)))
    train = cols["split"] == "train"
    assert list(cols["camid"][train]) == [4, 1, 2]  # sorted by path: train_nir before train_vis
    assert list(cols["modality"][train]) == [manifest.INFRARED, manifest.VISIBLE, manifest.VISIBLE]
    assert set(cols["pid"][train]) == {0}
    test = ~train
    assert set(cols["pid"][test]) == {5, 6}  # id 7 is on disk but not a test id; "6" matches unpadded
    assert dict(zip(cols["path"][test], cols["camid"][test], strict=True)) == {
        "test_nir/cam2/0005/z.jpg": 2,
        "test_nir/cam8/6/w.jpg": 8,
        "test_vis/cam1/0005/x.jpg": 1,
        "test_vis/cam9/0005/x.jpg": 9,
    }
    assert list(cols["modality"][test]) == [1, 1, 0, 0]


@pytest.mark.parametrize(
    "reader, make, remove",
    [
        (read_sysu, make_sysu, "exp/val_id.txt"),
        (read_regdb, make_regdb, "idx/test_thermal_1.txt"),
        (read_llcm, make_llcm, "idx/train_nir.txt"),
    ],
)
def test_missing_index_file_names_path_and_layout(tmp_path, reader, make, remove):
    root = make(tmp_path / "data")
    (root / remove).unlink()
    with pytest.raises(DatasetLayoutError) as err:
        reader(root)
    assert isinstance(err.value, FileNotFoundError)
    assert pickle.loads(pickle.dumps(err.value)).path == str(root / remove)
    assert str(root / remove) in str(err.value) and "Expected layout:" in str(err.value)
    assert Path(remove).name in str(err.value).split("Expected layout:")[1]


@pytest.mark.parametrize("name", ["sysu", "regdb", "llcm", "synthvi"])
def test_missing_root_names_path_and_layout(tmp_path, name):
    with pytest.raises(DatasetLayoutError) as err:
        load_manifest(name, tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    assert str(tmp_path / "nowhere") in str(err.value) and "ROOT/" in str(err.value)


def test_listed_file_missing_reports_count_and_paths(tmp_path):
    root = make_regdb(tmp_path)
    for k in range(2):
        (root / "Visible" / "Visible_male_0" / f"v_{k}.bmp").unlink()
    with pytest.raises(DatasetLayoutError, match=r"2 file\(s\) listed in idx/train_visible_1.txt") as err:
        read_regdb(root)
    assert "Visible/Visible_male_0/v_0.bmp" in str(err.value)


def test_unknown_name_lists_names(tmp_path):
    with pytest.raises(ValueError, match="sysu, regdb, llcm, synthvi"):
        load_manifest("market", tmp_path)


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root = make_sysu(tmp_path / "sysu")
    first = load_manifest("sysu", root)
    cache = manifest_cache_path("sysu", root)
    assert cache.is_file() and cache.parent == root and cache.name.startswith(".dmdl_manifest-")
    calls = []
    monkeypatch.setattr("dmdl_dist.data.datasets.read_sysu", lambda *a, **k: calls.append(1) or first)
    assert load_manifest("sysu", root).equals(first) and not calls  # served from the cache
    load_manifest("synthvi", root, holdout_val=True)
    assert calls  # other name and options, other key
    monkeypatch.undo()

    # swap the val and test ids: same sizes, so only the mtimes tell the change
    for name, ids in (("test", "3"), ("val", "4")):
        (root / "exp" / f"{name}_id.txt").write_text(ids)
        os.utime(root / "exp" / f"{name}_id.txt", ns=(1, 1))
    changed = manifest.columns(load_manifest("sysu", root))
    assert set(changed["split"][changed["pid"] == 3]) == {"test"}
    assert set(changed["split"][changed["pid"] == 4]) == {"train"}
    assert not cache.exists()  # the stale cache was replaced
    assert len(list(root.glob(".dmdl_manifest-sysu-trainval-*"))) == 1


def test_cache_dir_and_corrupt_cache(tmp_path):
    root = make_llcm(tmp_path / "llcm")
    first = load_manifest("llcm", root, cache_dir=tmp_path / "cache")
    cache = manifest_cache_path("llcm", root, cache_dir=tmp_path / "cache")
    assert cache.parent == tmp_path / "cache" and not list(root.glob(".dmdl_manifest-*"))
    cache.write_bytes(b"not parquet")
    assert load_manifest("llcm", root, cache_dir=tmp_path / "cache").equals(first)


def test_verify_images_finds_truncated_and_non_images(tmp_path):
    root = make_sysu(tmp_path)
    table = read_sysu(root)
    truncated = root / "cam1" / "0001" / "0001.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (root / "cam2" / "0001" / "0001.jpg").write_text("this is not a jpeg")
    (root / "cam4" / "0001" / "0001.jpg").write_bytes(b"")
    (root / "cam6" / "0004" / "0002.jpg").unlink()
    bad = {"cam1/0001/0001.jpg", "cam2/0001/0001.jpg", "cam4/0001/0001.jpg", "cam6/0004/0002.jpg"}

    with pytest.raises(BadImagesError) as err:
        verify_images(root, table, workers=2)
    message = str(err.value)
    assert f"4 of {table.num_rows} images" in message and "data.skip_bad_images=true" in message
    assert dict(err.value.bad).keys() == bad
    assert "truncated" in dict(err.value.bad)["cam1/0001/0001.jpg"]
    assert "not an image" in dict(err.value.bad)["cam2/0001/0001.jpg"]
    assert "empty" in dict(err.value.bad)["cam4/0001/0001.jpg"]
    assert dict(err.value.bad)["cam6/0004/0002.jpg"] == "missing"
    assert str(pickle.loads(pickle.dumps(err.value))) == message  # crosses process boundaries intact

    seen = []
    kept = verify_images(root, table, skip_bad=True, workers=2, progress=lambda done, total: seen.append(done))
    assert kept.num_rows == table.num_rows - 4 and not bad & set(kept.column("path").to_pylist())
    assert seen[-1] == table.num_rows


def test_verify_images_passes_clean_table(tmp_path):
    root = make_regdb(tmp_path)
    table = read_regdb(root)
    assert verify_images(root, table, workers=2) is table


def test_image_dataset_returns_rgb_and_index(tmp_path):
    root = make_regdb(tmp_path)
    paths = manifest.columns(read_regdb(root))["path"]
    assert load_image(root, paths[0]).mode == "RGB"
    dataset = ImageDataset(root, paths, transform=lambda image: np.asarray(image))
    image, index = dataset[3]
    assert len(dataset) == len(paths) and index == 3 and image.shape == (16, 8, 3)
