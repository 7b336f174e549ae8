"""LLCM reader: training images from the idx lists, test images from the test folders.

The test folders are walked (not listed) because the published evaluation picks gallery
images from the folders of the ids in idx/test_id.txt; the camera is the camN folder.
Evaluating needs only the test part: a tree without idx/train_vis.txt and idx/train_nir.txt
(and the training folders) reads as a test-only manifest; training on it is refused (engine/data.py).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from dmdl_dist.data.layout import (
    DatasetLayoutError,
    camera_from_path,
    camera_number,
    check_listed_files,
    id_folders,
    image_names,
    read_id_list,
    read_labelled_list,
    require,
    subfolders,
)
from dmdl_dist.data.manifest import INFRARED, VISIBLE, make_manifest

DATASET = "LLCM"
# train list and test folder of each modality
SOURCES = {VISIBLE: ("train_vis.txt", "test_vis"), INFRARED: ("train_nir.txt", "test_nir")}
LAYOUT = """\
ROOT/
  train_vis/cam1/0001/*.jpg ...     training images (paths as listed in idx/; training only)
  train_nir/cam1/0001/*.jpg ...
  test_vis/cam1/ ... cam9/          one folder per identity inside, e.g. test_vis/cam1/0003/*.jpg
  test_nir/cam1/ ... cam9/          (the published set has no infrared cam3)
  idx/
    train_vis.txt                   lines "<relative path> <label>", e.g. "train_vis/cam1/0001/a.jpg 0"
    train_nir.txt                   (both lists: training only)
    test_id.txt                     one line of comma-separated test ids"""
TRAINING_PART = ("idx/train_vis.txt", "idx/train_nir.txt")  # absent both: a test-only tree


def read_llcm(root: str | Path) -> pa.Table:
    """Manifest of the listed training images (pid = label) and the test ids' images, sorted by path.

    Only the test rows when the tree has neither training list (a test-only copy).
    """
    root = require(DATASET, Path(root), LAYOUT, is_dir=True)
    idx = require(DATASET, root / "idx", LAYOUT, is_dir=True)
    test_ids = set(read_id_list(require(DATASET, idx / "test_id.txt", LAYOUT, is_dir=False)))
    paths, pids, camids, modalities, splits = [], [], [], [], []
    # one training list without the other is an incomplete copy, not a test-only tree
    with_training = any((root / rel).is_file() for rel in TRAINING_PART)

    for modality, (list_name, _) in SOURCES.items():
        if not with_training:
            break
        pairs = read_labelled_list(require(DATASET, idx / list_name, LAYOUT, is_dir=False))
        check_listed_files(DATASET, root, (rel for rel, _ in pairs), f"idx/{list_name}")
        for rel, label in pairs:
            camid = camera_from_path(rel)
            if camid is None:
                raise DatasetLayoutError(f"{DATASET}: idx/{list_name} lists {rel!r}, which has no camN folder (the "
                                         "camera)", idx / list_name)
            paths.append(rel)
            pids.append(label)
            camids.append(camid)
            modalities.append(modality)
            splits.append("train")

    for modality, (_, folder_name) in SOURCES.items():
        for rel, pid, camid in _walk_test_folder(root, folder_name, test_ids):
            paths.append(rel)
            pids.append(pid)
            camids.append(camid)
            modalities.append(modality)
            splits.append("test")
    return make_manifest(paths, pids, camids, modalities, splits).sort_by("path")


def _walk_test_folder(root: Path, folder_name: str, test_ids: set[int]) -> list[tuple[str, int, int]]:
    """(relative path, pid, camid) of every image of a test id under ROOT/folder_name/camN/<pid>/."""
    test_dir = require(DATASET, root / folder_name, LAYOUT, is_dir=True)
    rows = []
    for cam_dir in subfolders(test_dir):
        camid = camera_number(cam_dir.name)
        if camid is None:
            continue
        for pid, id_dir in id_folders(Path(cam_dir.path), test_ids):
            prefix = f"{folder_name}/{cam_dir.name}/{id_dir.name}"
            rows += [(f"{prefix}/{name}", pid, camid) for name in image_names(id_dir.path)]
    if not rows:
        message = f"{DATASET}: no images of the ids in idx/test_id.txt under {test_dir}.\nExpected layout:\n{LAYOUT}"
        raise DatasetLayoutError(message, test_dir)
    return rows
