"""Two-epoch training runs on the tiny SynthVI: the whole pipeline, resume and the CLI."""

import json

import pytest
import torch

from dmdl_dist.cli import main
from dmdl_dist.commands.train import train_local
from dmdl_dist.config import load_config
from dmdl_dist.engine import checkpoint as ckpt
from dmdl_dist.engine.trainer import train

pytestmark = pytest.mark.slow


def _quiet(*_args, **_kw):
    pass


def test_two_stage_run_evaluates_and_checkpoints(tmp_path, tiny_root):
    cfg = load_config("tiny")
    results = train_local(cfg, tmp_path / "run", progress=False, echo=_quiet)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "last.pt").is_file() and (run / "results.json").is_file()
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in history] == [1, 2]
    assert {"memory", "triplet", "mmd"} <= set(history[0]["losses"])
    assert {"memory", "cai", "triplet", "mmd"} <= set(history[1]["losses"])
    # what a stage-2 epoch records: the anchor (infrared on stage-2 epoch 0), k1 per modality (the anchor's is
    # cluster.k1), clusters per modality, the shared labels (the anchor's clusters), association, confidence
    s2 = history[1]
    assert s2["anchor"] == 1 and s2["k1"] == [cfg.cluster.k1_source, cfg.cluster.k1]
    assert s2["num_shared"] == s2["clusters"][1] > 0 and 0 <= s2["association_rate"] <= 1
    assert len(s2["confidence"]) == 2 and len(s2["step_losses"]["memory"]) == cfg.train.iters_per_epoch
    for protocol in ("synthvi-all",):
        metrics = results["test"][protocol]["mean"]
        assert 0 <= metrics["mAP"] <= 100 and 0 <= metrics["rank1"] <= 100
        assert len(results["test"][protocol]["trials"]) == cfg.eval.trials
    assert "val" not in json.dumps(results["selected"]) or results["best_val_mAP"] is not None
    # what a person opens first: the report of the tiny run names every picture, and each exists
    report = (run / "report.md").read_text()
    for png in ("losses", "clusters", "association", "validation", "ranked", "gap"):
        assert (run / "figures" / f"{png}.png").stat().st_size > 0 and f"figures/{png}.png" in report, png
    assert sorted(p.name for p in (run / "gap").iterdir()) == ["stage1.npz", "stage2.npz", "untrained.npz"]
    assert list((run / "tb").glob("events.out.tfevents.*"))


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path, tiny_root):
    cfg = load_config("tiny", overrides=["data.holdout_val=false"])
    full = train(cfg, tmp_path / "full", progress=False, echo=_quiet)
    # the interrupted run reads every image file (data.cache_mb=0), its resumption and the full run the image
    # cache: the numbers are the same
    no_cache = load_config("tiny", overrides=["data.holdout_val=false", "data.cache_mb=0"])
    stopped = train(no_cache, tmp_path / "cut", progress=False, echo=_quiet, stop_after=1)
    assert stopped == {"stopped_at": 1}
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False, echo=_quiet)
    history = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(h)["epoch"] for h in history] == [1, 2]
    a = ckpt.load(tmp_path / "full" / "last.pt")["model"]
    b = ckpt.load(tmp_path / "cut" / "last.pt")["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    assert resumed["test"]["synthvi-all"]["mean"] == pytest.approx(full["test"]["synthvi-all"]["mean"], abs=1e-4)


def test_cli_train_extract_and_eval_features(tmp_path, tiny_root, capsys):
    rc = main(["train", "--preset", "tiny", "--out", str(tmp_path), "--name", "r", "--no-progress",
               "--set", "cai.enabled=false", "--set", "train.stage2_epochs=0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "synthvi-all" in out and "mAP" in out
    feats = tmp_path / "f.parquet"
    assert main(["extract", "--checkpoint", str(tmp_path / "r" / "last.pt"), "--dataset", "synthvi",
                 "--root", str(tiny_root), "--out", str(feats)]) == 0
    js = tmp_path / "m.json"
    assert main(["eval-features", "--dataset", "synthvi", "--root", str(tiny_root), "--features", str(feats),
                 "--mode", "all", "--trials", "2", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert set(data["mean"]) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"} and len(data["trials"]) == 2
    # The same model through `dmdl eval` gives the same numbers as its extracted features.
    js2 = tmp_path / "m2.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "r" / "last.pt"), "--dataset", "synthvi",
                 "--root", str(tiny_root), "--mode", "all", "--trials", "2", "--json", str(js2)]) == 0
    assert json.loads(js2.read_text())["mean"] == pytest.approx(data["mean"], abs=1e-3)


def test_cli_refuses_to_overwrite_a_run(tmp_path, tiny_root, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "last.pt").write_bytes(b"x")
    rc = main(["train", "--preset", "tiny", "--out", str(tmp_path), "--name", "r"])
    assert rc == 2 and "--resume" in capsys.readouterr().err


def test_cli_eval_features_reports_missing_images(tmp_path, tiny_root, capsys):
    import numpy as np

    from dmdl_dist.eval.run import write_features_parquet

    write_features_parquet(tmp_path / "few.parquet", ["cam3/0001/0001.jpg"], np.ones((1, 4), np.float32))
    rc = main(["eval-features", "--dataset", "synthvi", "--root", str(tiny_root),
               "--features", str(tmp_path / "few.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and "lacks features for" in err and ".jpg" in err


def test_bf16_engine_autocasts_and_a_bf16_run_trains(tmp_path, tiny_root):
    from dmdl_dist.distributed.backend import build_engine
    from dmdl_dist.models.backbone import build_model

    cfg = load_config("tiny", overrides=["dist.precision=bf16", "run.report=false"])
    engine = build_engine(build_model("small"), torch.device("cpu"), cfg)
    feat, bn = engine(torch.randn(2, 3, 64, 32))
    assert feat.dtype == torch.bfloat16  # the forward runs under autocast; the weights stay fp32
    assert next(engine.model.parameters()).dtype == torch.float32
    results = train(cfg, tmp_path / "run", progress=False, echo=_quiet)
    assert 0 <= results["test"]["synthvi-all"]["mean"]["mAP"] <= 100
