"""dmdl report on a hand-made run folder (no training): files, picture sizes, tables, TensorBoard, frames."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dmdl_dist.commands import report as commands
from dmdl_dist.config import load_config, save_config, to_dict
from dmdl_dist.data.datasets import load_manifest
from dmdl_dist.data.manifest import columns, select
from dmdl_dist.engine import checkpoint as ckpt
from dmdl_dist.engine.snapshot import gap_snapshot, load_snapshot, save_snapshot
from dmdl_dist.models.backbone import build_model
from dmdl_dist.report import curves, gap_plot, ranked
from dmdl_dist.report.gap import between_identity_distance, cross_modality_distance
from dmdl_dist.report.history import read_history
from dmdl_dist.report.report import write_report, write_table_report
from dmdl_dist.report.tb import read_scalars, write_tensorboard

CURVES = ("losses", "clusters", "association", "validation")


def _record(epoch, stage, val=None):
    losses = {"memory": 3.0 - 0.5 * epoch, "triplet": 0.6 / epoch, "mmd": 0.1}
    if stage == 2:
        losses.update(cross=2.0, cai=0.4)
    losses["total"] = sum(losses.values())
    rec = {
        "epoch": epoch, "stage": stage, "losses": losses, "clusters": [10 + epoch, 8 + epoch],
        "outliers": [0.3 / epoch, 0.4 / epoch], "num_shared": 7 if stage == 2 else 0, "anchor": 1,
        "association_rate": 0.75 if stage == 2 else 0.0,
        "time": {"refresh": 2.0, "train": 5.0, "refresh_extract": 1.5, "refresh_dbscan": 0.5},
        "images_per_s": 120.0, "workers": 1,
    }
    if val is not None:
        rec.update(val_rank1=val, val_mAP=val / 2)
        rec["time"]["val"] = 1.0
    return rec


def _results():
    trial = [{"rank1": 40.0 + t, "rank5": 70.0, "rank10": 80.0, "rank20": 90.0, "mAP": 35.0 + t, "mINP": 20.0}
             for t in range(2)]
    mean = {k: float(np.mean([t[k] for t in trial])) for k in trial[0]}
    return {"selected": "best val mAP (epoch 3)", "epochs": 3, "best_val_mAP": 21.0,
            "test": {"synthvi-all": {"mean": mean, "trials": trial},
                     "synthvi-indoor": {"mean": mean, "trials": trial}}}


@pytest.fixture(scope="module")
def tiny_test(tiny_root):
    cfg = load_config("tiny", overrides=["train.stage1_epochs=2", "train.device=cpu"])
    return cfg, select(load_manifest("synthvi", tiny_root), split="test")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_root, tiny_test):
    """A finished run's folder made by hand, then reported once; the tests read what it wrote."""
    cfg, test = tiny_test
    run = tmp_path_factory.mktemp("run")
    save_config(cfg, run / "config.yaml")
    records = [_record(1, 1, val=20.0), _record(2, 1, val=30.0), _record(3, 2, val=42.0)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "results.json").write_text(json.dumps(_results()))
    torch.manual_seed(0)
    model = build_model("small")
    ckpt.save_atomic({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 2}, run / "best.pt")
    for tag in ("untrained", "stage2"):  # "after stage 2" from a second random model: only the picture matters
        save_snapshot(gap_snapshot(model, tiny_root, test, cfg, torch.device("cpu"), n_ids=8, per_id=4),
                      run / "gap" / f"{tag}.npz")
        torch.manual_seed(1)
        model = build_model("small")
    return run, write_report(run)


def _png(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_cross_modality_distance_hand_worked():
    feats = np.array([[3.0, 0.0], [0.0, 2.0],  # id 1: visible (1, 0), infrared (0, 1) -> sqrt(2)
                      [1.0, 0.0], [0.0, 1.0], [1.0, 1.0],  # id 2: visible mean (.5, .5), infrared (.707, .707)
                      [5.0, 5.0]])  # id 3: visible only, ignored
    modality = np.array([0, 1, 0, 0, 1, 0])
    pid = np.array([1, 1, 2, 2, 2, 3])
    id2 = 1 - 1 / math.sqrt(2)  # |(.5, .5) - (1/sqrt2, 1/sqrt2)| = sqrt(2) (1/sqrt2 - .5)
    assert cross_modality_distance(feats, modality, pid) == pytest.approx((math.sqrt(2) + id2) / 2)
    with pytest.raises(ValueError, match="both modalities"):
        cross_modality_distance(feats[:1], modality[:1], pid[:1])


def test_between_identity_distance_hand_worked():
    feats = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # centroids (1, 0), (0, 1), (-1, 0)
    pid = np.array([7, 7, 8, 9])
    assert between_identity_distance(feats, pid) == pytest.approx((math.sqrt(2) + 2 + math.sqrt(2)) / 3)


def test_report_writes_every_file(finished_run):
    run, report = finished_run
    assert report == run / "report.md" and report.is_file()
    for name in (*CURVES, "ranked", "gap"):
        assert (run / "figures" / f"{name}.png").is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert not list(run.rglob(".*tmp*")), "a temporary file was left behind"


def test_pngs_have_the_documented_size_and_are_not_blank(finished_run):
    run, _ = finished_run
    sizes = {name: curves.PIXELS for name in CURVES}
    sizes["ranked"] = ranked.figure_pixels(6, 10)
    sizes["gap"] = (2 * gap_plot.PANEL_PX[0], gap_plot.PANEL_PX[1])
    for name, (width, height) in sizes.items():
        pixels = _png(run / "figures" / f"{name}.png")
        assert pixels.shape == (height, width, 3), name
        assert pixels.var() > 0, name


def test_report_md_links_pictures_and_holds_the_tables(finished_run):
    run, report = finished_run
    text = report.read_text()
    for name in (*CURVES, "ranked", "gap"):
        assert f"](figures/{name}.png)" in text, name
    assert "| protocol | trials | R1 |" in text and "| synthvi-all | 2 | 40.50 ± 0.50 |" in text
    assert "Best validation mAP: 21.00" in text
    assert "| refresh | 6.0 s |" in text and "| train | 15.0 s |" in text and "| val | 3.0 s |" in text
    assert "refresh: extract | 4.5 s" in text
    assert "| 3 | 2 |" in text  # the stage-2 epoch row
    assert "```yaml" in text and "stage1_epochs: 2" in text
    assert "**torch**" in text and "**training workers**: 1" in text
    images = len(load_snapshot(run / "gap" / "stage2.npz")["pid"])  # <= 8 ids x (4 visible + 4 infrared)
    assert 16 <= images <= 64 and f"| after stage 2 | {images} |" in text


def test_tensorboard_holds_every_scalar_once(finished_run):
    run, _ = finished_run
    history = read_history(run / "metrics.jsonl")
    write_tensorboard(history, run / "tb")  # a second report must not duplicate the events
    tags = read_scalars(run / "tb")
    assert tags["losses/memory"] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert [s for s, _ in tags["losses/cai"]] == [3]
    assert tags["clusters/infrared"] == [(1, 9.0), (2, 10.0), (3, 11.0)]
    assert tags["val/mAP"][-1] == (3, 21.0)
    assert {"outliers/visible", "time/refresh", "time/refresh_extract", "association_rate", "workers"} <= set(tags)


def test_ranked_frames_are_green_for_a_match_and_red_otherwise(tmp_path, tiny_test, tiny_root):
    _, test = tiny_test
    cols = columns(test)
    pids = np.unique(cols["pid"])
    a, b = (np.flatnonzero(cols["pid"] == p)[:2] for p in pids[:2])
    gallery = [a[1], b[0], b[1]]  # the query's own identity first, then another one twice
    out = ranked.ranked_list_figure([cols["path"][a[0]]], list(cols["path"][gallery]), tiny_root,
                                    np.array([[0, 1, 2]]), [int(pids[0])], [int(pids[0]), int(pids[1]),
                                                                            int(pids[1])],
                                    tmp_path / "r.png", top=3)
    pixels = _png(out)
    assert pixels.shape[:2] == ranked.figure_pixels(1, 3)[::-1]
    colour = {name: np.array(Image.new("RGB", (1, 1), hexa).getpixel((0, 0)))
              for name, hexa in (("green", ranked.CORRECT), ("red", ranked.WRONG))}
    for col, expected in ((1, "green"), (2, "red"), (3, "red")):
        x, y = ranked.frame_point(0, col)
        assert np.abs(pixels[y, x].astype(int) - colour[expected]).max() <= 8, (col, pixels[y, x])


def test_top_k_is_best_first_and_stable():
    scores = np.array([[0.1, 0.9, 0.5, 0.9]])
    assert ranked.top_k(scores, 3).tolist() == [[1, 3, 2]]


def test_snapshot_round_trip(tmp_path):
    snap = {"features": np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32),
            "modality": np.array([0, 1] * 3, np.int8), "pid": np.array([1, 1, 2, 2, 3, 3])}
    back = load_snapshot(save_snapshot(snap, tmp_path / "g" / "stage1.npz"))
    for key, value in snap.items():
        np.testing.assert_array_equal(back[key], value)
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["stage1.npz"]
    with pytest.raises(ValueError, match="lacks"):
        save_snapshot({"features": snap["features"]}, tmp_path / "bad.npz")


def test_unfinished_run_says_so_through_the_cli(tmp_path, tiny_test, capsys):
    cfg, _ = tiny_test
    save_config(cfg, tmp_path / "config.yaml")
    (tmp_path / "metrics.jsonl").write_text(json.dumps(_record(1, 1)) + "\n")
    parser = argparse.ArgumentParser()
    commands.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(tmp_path)])
    assert commands.COMMANDS[args.command](args) == 0
    assert "report.md" in capsys.readouterr().out
    text = (tmp_path / "report.md").read_text()
    assert "has not finished" in text and "1 of 3 epochs" in text and "No checkpoint" in text
    assert "association.png" not in text and "](figures/losses.png)" in text


def test_not_a_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dmdl_dist run folder"):
        write_report(tmp_path)


def test_history_keeps_the_last_record_of_an_epoch(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (_record(1, 1), _record(2, 1), _record(2, 2))))
    assert [(r["epoch"], r["stage"]) for r in read_history(path)] == [(1, 1), (2, 2)]
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1"):
        read_history(path)


def test_table_report(tmp_path):
    rows = [{"variant": "baseline", "protocol": "synthvi-all", "mAP": 30.0},
            {"variant": "full | DMDL", "protocol": "synthvi-all", "mAP": 41.25}]
    text = write_table_report("Ablation", rows, tmp_path, {"Runs": "one seed"}).read_text()
    assert text.startswith("# Ablation")
    assert "| variant | protocol | mAP |" in text and "| full \\| DMDL | synthvi-all | 41.250 |" in text
    assert "## Runs" in text and "## Environment" in text
