"""SYSU-MM01 reader (also reads SynthVI, which is written in the same layout).

Reads the published layout as is: six camera folders of identity folders, and the three id
lists in exp/. Visible cameras are 1, 2, 4, 5 (indoor 1, 2); infrared cameras are 3 and 6.
Evaluating needs only the test part: a tree without train_id.txt and val_id.txt (and without the
training ids' images) reads as a test-only manifest; training on it is refused (engine/data.py).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from dmdl_dist.data.layout import DatasetLayoutError, id_folders, image_names, read_id_list, require
from dmdl_dist.data.manifest import INFRARED, VISIBLE, make_manifest

DATASET = "SYSU-MM01"
CAMERA_MODALITY = {1: VISIBLE, 2: VISIBLE, 3: INFRARED, 4: VISIBLE, 5: VISIBLE, 6: INFRARED}
LAYOUT = """\
ROOT/
  cam1/ ... cam6/          visible: cam1, cam2, cam4, cam5; infrared: cam3, cam6
    0001/0001.jpg ...      one folder per identity (4-digit id), its images inside
  exp/
    train_id.txt           one line of comma-separated ids, e.g. 1,2,4,5 (training only)
    val_id.txt             (training only)
    test_id.txt"""
TRAINING_PART = ("exp/train_id.txt", "exp/val_id.txt")  # absent both: a test-only tree


def read_split_ids(root: Path, *, holdout_val: bool) -> dict[int, str]:
    """Maps every listed id to its split: val ids join train unless held out for model selection.

    Only test ids when the tree has neither training list (a test-only copy).
    """
    exp = require(DATASET, root / "exp", LAYOUT, is_dir=True)
    names = ["test"]
    present = [(root / rel).is_file() for rel in TRAINING_PART]
    if any(present):  # one training list without the other is an incomplete copy, not a test-only tree
        names = ["train", "val", "test"]
    lists = {name: read_id_list(require(DATASET, exp / f"{name}_id.txt", LAYOUT, is_dir=False)) for name in names}
    split_of: dict[int, str] = {}
    for name, ids in lists.items():
        split = "train" if name == "val" and not holdout_val else name
        for pid in ids:
            if split_of.get(pid, split) != split:
                raise DatasetLayoutError(f"{DATASET}: id {pid} is listed in more than one of "
                                         f"{exp}/{{train,val,test}}_id.txt", exp)
            split_of[pid] = split
    return split_of


def read_sysu(root: str | Path, *, holdout_val: bool = False) -> pa.Table:
    """Manifest of every image of the train, val and test ids, sorted by path.

    Args:
        root: the folder holding cam1..cam6 and exp/.
        holdout_val: give val_id.txt's ids split "val" (for model selection) instead of
            training on them, which is what the published protocol does.
    """
    root = require(DATASET, Path(root), LAYOUT, is_dir=True)
    split_of = read_split_ids(root, holdout_val=holdout_val)
    cam_dirs = {cam: require(DATASET, root / f"cam{cam}", LAYOUT, is_dir=True) for cam in CAMERA_MODALITY}

    paths, pids, camids, modalities, splits = [], [], [], [], []
    for cam, cam_dir in cam_dirs.items():
        for pid, folder in id_folders(cam_dir, set(split_of)):
            for name in image_names(folder.path):
                paths.append(f"cam{cam}/{folder.name}/{name}")
                pids.append(pid)
                camids.append(cam)
                modalities.append(CAMERA_MODALITY[cam])
                splits.append(split_of[pid])
    if not paths:
        message = f"{DATASET}: no images of the listed ids under {root}.\nExpected layout:\n{LAYOUT}"
        raise DatasetLayoutError(message, root)
    return make_manifest(paths, pids, camids, modalities, splits).sort_by("path")
