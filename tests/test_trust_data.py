"""Issue 11 (trust), data: malformed feature files, test-only data set trees, images left out on request."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trust_trees import make_llcm_test_only, make_sysu, save_checkpoint

from dmdl_dist.cli import main
from dmdl_dist.config import load_config
from dmdl_dist.data.datasets import DatasetLayoutError, load_manifest
from dmdl_dist.data.manifest import columns
from dmdl_dist.engine.data import BAD_IMAGES, load_run_data
from dmdl_dist.eval.run import FeaturesFileError, read_features, write_features_parquet

# --- 3. eval-features never evaluates a malformed file -------------------------------------------------------------


def _features_table(paths, features, *, list_type: pa.DataType | None = None) -> pa.Table:
    feature = pa.array(features, list_type or pa.list_(pa.float32()))
    return pa.table({"path": pa.array(paths, pa.string()), "feature": feature})


NAN, INF = float("nan"), float("inf")
GOOD = [0.1, 0.2, 0.3, 0.4]
MALFORMED = {
    # case: (paths, features, what the error must say)
    "mixed lengths": (["a.jpg", "b.jpg", "c.jpg", "d.jpg"], [GOOD, GOOD, [0.1, 0.2, 0.3], GOOD + [0.5]],
                      "2 features not of the common length 4 (c.jpg, d.jpg)"),
    "NaN": (["a.jpg", "b.jpg", "c.jpg"], [GOOD, [NAN] * 4, GOOD], "1 features with NaN or infinite values (b.jpg)"),
    "infinite": (["a.jpg", "b.jpg"], [[INF, 0, 0, 0], GOOD], "1 features with NaN or infinite values (a.jpg)"),
    "duplicate paths": (["a.jpg", "b.jpg", "a.jpg", "c.jpg", "c.jpg"], [GOOD] * 5,
                        "2 paths listed more than once (a.jpg, c.jpg)"),
    "null features": (["a.jpg", "b.jpg", "c.jpg"], [GOOD, None, None], "2 null features (b.jpg, c.jpg)"),
    "null values": (["a.jpg", "b.jpg"], [GOOD, [0.1, None, 0.3, 0.4]], "1 features with null values (b.jpg)"),
    "zero rows": ([], [], "has no rows"),
    "length 0": (["a.jpg"], [[]], "features of length 0"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_features_file_is_one_error_naming_count_and_paths(tmp_path, case):
    paths, features, message = MALFORMED[case]
    path = tmp_path / "f.parquet"
    pq.write_table(_features_table(paths, features), path)
    with pytest.raises(FeaturesFileError) as err:
        read_features(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_more_than_a_few_offenders_are_counted_and_a_few_named(tmp_path):
    paths = [f"{i:03d}.jpg" for i in range(40)]
    pq.write_table(_features_table(paths, [[NAN] * 4] * 40), tmp_path / "f.parquet")
    with pytest.raises(FeaturesFileError, match=r"40 features with NaN or infinite values \(000.jpg, 001.jpg, 002.jpg, "
                                                r"003.jpg, 004.jpg, \.\.\.\)"):
        read_features(tmp_path / "f.parquet")


@pytest.mark.parametrize("content, message", [
    (b"", r"is empty \(0 bytes\)"),
    (b"path,feature\na.jpg,0.1\n", "is not a readable Parquet file"),
])
def test_an_empty_or_foreign_file_is_one_error(tmp_path, content, message):
    (tmp_path / "f.parquet").write_bytes(content)
    with pytest.raises(FeaturesFileError, match=message):
        read_features(tmp_path / "f.parquet")


def test_a_missing_column_or_wrong_type_is_one_error(tmp_path):
    pq.write_table(pa.table({"path": ["a.jpg"], "feat": [GOOD]}), tmp_path / "f.parquet")
    with pytest.raises(FeaturesFileError, match=r"has no column 'feature' \(it has path, feat\)"):
        read_features(tmp_path / "f.parquet")
    pq.write_table(pa.table({"path": ["a.jpg"], "feature": ["0.1 0.2"]}), tmp_path / "g.parquet")
    with pytest.raises(FeaturesFileError, match="column 'feature' holds string"):
        read_features(tmp_path / "g.parquet")


def test_well_formed_features_of_every_list_type_are_read(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_features_parquet(tmp_path / "f.parquet", ["a.jpg", "b.jpg", "c.jpg"], feats)
    paths, got = read_features(tmp_path / "f.parquet")
    assert paths == ["a.jpg", "b.jpg", "c.jpg"] and np.array_equal(got, feats)
    for list_type in (pa.large_list(pa.float64()), pa.list_(pa.float32(), 4), pa.list_(pa.int64())):
        pq.write_table(_features_table(["a.jpg", "b.jpg", "c.jpg"], feats.astype(int).tolist(), list_type=list_type),
                       tmp_path / "g.parquet")
        assert np.array_equal(read_features(tmp_path / "g.parquet")[1], feats)


def test_cli_evaluates_nothing_from_a_malformed_file(tmp_path, capsys):
    root = make_sysu(tmp_path / "sysu", training=False)
    test_paths = list(columns(load_manifest("sysu", root))["path"])
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(test_paths), 8)).tolist()
    features[3] = [NAN] * 8  # before: ranked, all-NaN features above the real ones
    pq.write_table(_features_table(test_paths, features), tmp_path / "f.parquet")
    assert main(["eval-features", "--dataset", "sysu", "--root", str(root), "--features",
                 str(tmp_path / "f.parquet")]) == 2
    captured = capsys.readouterr()
    assert "mAP" not in captured.out and len(captured.err.strip().splitlines()) == 1
    assert f"1 features with NaN or infinite values ({test_paths[3]})" in captured.err
    assert main(["eval-features", "--dataset", "sysu", "--root", str(root), "--features",
                 str(tmp_path / "absent.parquet")]) == 2
    assert "features file" in capsys.readouterr().err


# --- 4. evaluating needs only the test part ------------------------------------------------------------------------


def _random_features(root, dataset: str, out):
    paths = list(columns(load_manifest(dataset, root))["path"])
    write_features_parquet(out, paths, np.random.default_rng(0).normal(size=(len(paths), 8)).astype(np.float32))
    return out


def test_a_test_only_sysu_tree_is_evaluated_and_extracted(tmp_path, capsys):
    root = make_sysu(tmp_path / "sysu", training=False)
    manifest = load_manifest("sysu", root)
    assert set(columns(manifest)["split"]) == {"test"} and manifest.num_rows == 6 * 2 * 2  # before: refused
    features = _random_features(root, "sysu", tmp_path / "f.parquet")
    assert main(["eval-features", "--dataset", "sysu", "--root", str(root), "--features", str(features),
                 "--trials", "2", "--json", str(tmp_path / "m.json")]) == 0
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"sysu-all", "sysu-indoor"}
    checkpoint = save_checkpoint(tmp_path / "best.pt")
    assert main(["extract", "--checkpoint", str(checkpoint), "--dataset", "sysu", "--root", str(root),
                 "--split", "test", "--out", str(tmp_path / "x.parquet")]) == 0
    assert pq.read_table(tmp_path / "x.parquet").num_rows == manifest.num_rows
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", "sysu", "--root", str(root),
                 "--mode", "all", "--trials", "2"]) == 0
    assert "sysu-all" in capsys.readouterr().out
    assert main(["extract", "--checkpoint", str(checkpoint), "--dataset", "sysu", "--root", str(root),
                 "--split", "train", "--out", str(tmp_path / "y.parquet")]) == 2
    assert "no images of split 'train'" in capsys.readouterr().err


def test_a_test_only_llcm_tree_is_evaluated(tmp_path, capsys):
    root = make_llcm_test_only(tmp_path / "llcm")
    features = _random_features(root, "llcm", tmp_path / "f.parquet")
    assert main(["eval-features", "--dataset", "llcm", "--root", str(root), "--features", str(features),
                 "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "llcm-v2i" in out and "llcm-i2v" in out


@pytest.mark.parametrize("dataset, make, needs", [
    ("sysu", lambda root: make_sysu(root, training=False), "exp/train_id.txt and exp/val_id.txt"),
    ("llcm", make_llcm_test_only, "idx/train_vis.txt and idx/train_nir.txt"),
])
def test_training_on_a_test_only_tree_names_what_is_missing(tmp_path, dataset, make, needs):
    root = make(tmp_path / dataset)
    cfg = load_config("tiny", overrides=[f"data.dataset={dataset}", f"data.root={root}"])
    with pytest.raises(DatasetLayoutError, match=f"holds no training images: training needs its training part "
                                                 f"\\({needs}"):
        load_run_data(cfg)


def test_a_tree_with_one_training_list_is_incomplete_not_test_only(tmp_path):
    root = make_sysu(tmp_path / "sysu")
    (root / "exp" / "train_id.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="train_id.txt does not exist"):
        load_manifest("sysu", root)


# --- 7. images left out are named and listed -----------------------------------------------------------------------


def test_skipped_bad_images_are_counted_named_and_listed_in_the_run_folder(tmp_path, caplog):
    root = make_sysu(tmp_path / "sysu")
    broken = ["cam1/0001/0001.jpg", "cam3/0002/0002.jpg"]
    for rel in broken:
        (root / rel).write_bytes(b"not a JPEG")
    total = load_manifest("sysu", root, holdout_val=True).num_rows
    cfg = load_config("tiny", overrides=["data.dataset=sysu", f"data.root={root}", "data.skip_bad_images=true"])
    with caplog.at_level(logging.WARNING, logger="dmdl_dist"):
        data = load_run_data(cfg, tmp_path / "run")
    assert data.manifest.num_rows == total - 2
    warning = caplog.text  # before: nothing said
    assert f"left out 2 of {total} images" in warning and all(rel in warning for rel in broken)
    assert str(tmp_path / "run" / BAD_IMAGES) in warning
    listed = (tmp_path / "run" / BAD_IMAGES).read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == broken and all("not an image" in line for line in listed)
