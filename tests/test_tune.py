"""Tune sweeps: search-space files as data, the sweep's sizing and scheduler, its result files, one real sweep."""

import argparse
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from dmdl_dist.commands.tune import COMMANDS, add_parsers
from dmdl_dist.config import ConfigError, load_config, to_dict
from dmdl_dist.tuning.results import BEST_CONFIG, SUMMARY, TABLE, SweepError, TrialRecord, write_results
from dmdl_dist.tuning.space import check_space, load_space, param_space, parse_space
from dmdl_dist.tuning.sweep import (
    SWEEP_FILE,
    Sweep,
    _write_record,
    concurrency,
    make_scheduler,
    max_epochs,
    prepare_base,
    run_sweep,
    trial_config,
    trial_need,
    unfinished_trials,
)

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "tune").glob("*.yaml"))


def _space_file(tmp_path, spec: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_every_distribution_becomes_its_tune_domain():
    from ray import tune

    space = parse_space({"space": {
        "cai.prior": {"choice": ["empirical", "uniform"]},
        "cai.enabled": {"grid": [True, False]},
        "cbt.erase_p": {"uniform": [0.1, 0.7]},
        "cai.weight": {"loguniform": [0.1, 2.0]},
        "cbt.gray_p": {"quniform": [0.0, 0.8, 0.2]},
        "cbt.topk_stage2": {"randint": [3, 16]},
        "cbt.mmd_kernels": 3,
    }})
    ps = param_space(space)
    assert isinstance(ps["cai.prior"], tune.search.sample.Categorical)
    assert ps["cai.prior"].categories == ["empirical", "uniform"]
    assert ps["cai.enabled"] == {"grid_search": [True, False]}
    assert (ps["cbt.erase_p"].lower, ps["cbt.erase_p"].upper) == (0.1, 0.7)
    assert isinstance(ps["cai.weight"].get_sampler(), tune.search.sample.LogUniform)
    assert isinstance(ps["cbt.gray_p"].get_sampler(), tune.search.sample.Quantized)
    assert (ps["cbt.topk_stage2"].lower, ps["cbt.topk_stage2"].upper) == (3, 16)
    assert ps["cbt.mmd_kernels"] == 3
    for _ in range(50):  # what trials will receive: in range, of the key's type
        assert 0.1 <= ps["cai.weight"].sample() <= 2.0
        gray = ps["cbt.gray_p"].sample()
        assert 0.0 <= gray <= 0.8 and abs(gray / 0.2 - round(gray / 0.2)) < 1e-9
        topk = ps["cbt.topk_stage2"].sample()
        assert isinstance(topk, int) and 3 <= topk < 16


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_check_against_the_schema(path):
    space = load_space(path)
    assert space.metric == "val_mAP" and space.mode == "max" and space.params
    for preset in ("synthvi", "tiny"):
        check_space(space, load_config(preset))


def test_shipped_spaces_cover_the_issue_keys():
    keys = set().union(*(load_space(p).params for p in SPACES))
    assert {"cai.enabled", "cai.weight", "cai.temperature", "cai.prior", "cbt.erase_p", "cbt.gray_p",
            "cbt.topk_stage1", "cbt.topk_stage2", "cbt.confidence", "cbt.mmd_weight", "cbt.mmd_kernels",
            "cluster.eps", "cluster.k1"} <= keys


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = _space_file(tmp_path, {"space": {"cai.weigth": {"uniform": [0.1, 1.0]}}})
    with pytest.raises(ConfigError, match=r"space\.yaml.*'cai\.weigth'"):
        check_space(load_space(path), load_config("tiny"))
    with pytest.raises(ConfigError, match=r"space\.yaml.*'cai\.weigth'"):
        prepare_base(load_space(path), preset="tiny")


@pytest.mark.parametrize("entry, message", [
    ({"normal": [0, 1]}, "unknown distribution 'normal'"),
    ({"uniform": [1.0, 0.1]}, "lower < upper"),
    ({"uniform": [0.1]}, "takes 2 numbers"),
    ({"loguniform": [0.0, 1.0]}, "positive lower bound"),
    ({"randint": [1.5, 4]}, "randint takes integers"),
    ({"choice": []}, "non-empty list"),
    ({"quniform": [0.1, 0.9, 0]}, "step must be positive"),
    ({"uniform": [0.1, 1.0], "choice": [1, 2]}, "exactly one distribution"),
])
def test_bad_distribution_is_an_error_naming_key_and_file(tmp_path, entry, message):
    path = _space_file(tmp_path, {"space": {"cai.weight": entry}})
    with pytest.raises(ConfigError, match=message) as err:
        load_space(path)
    assert "cai.weight" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("key, entry, message", [
    ("cbt.topk_stage1", {"quniform": [1, 5, 1]}, "expects int"),  # samples floats, the key is an int
    ("cluster.eps", {"uniform": [0.5, 1.2]}, r"cluster\.eps must be in \(0, 1\)"),
    ("cbt.confidence", {"choice": ["gmm", "kmeans"]}, "must be one of"),
])
def test_values_the_config_rejects_fail_before_launch(tmp_path, key, entry, message):
    path = _space_file(tmp_path, {"space": {key: entry}})
    with pytest.raises(ConfigError, match=message) as err:
        check_space(load_space(path), load_config("tiny"))
    assert key in str(err.value) and str(path) in str(err.value)


def test_space_file_shape_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level key"):
        parse_space({"space": {"cai.weight": 0.5}, "metrc": "val_mAP"})
    with pytest.raises(ConfigError, match="'space' must map"):
        parse_space({"metric": "val_mAP"})
    with pytest.raises(ConfigError, match="mode"):
        parse_space({"space": {"cai.weight": 0.5}, "mode": "maximise"})
    with pytest.raises(ConfigError, match="both searched and fixed"):
        parse_space({"space": {"cai.weight": 0.5}, "base": {"set": {"cai.weight": 1.0}}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "missing.yaml")


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("space:\n  train.lr: {loguniform: [1e-5, 1e-3]}\n")  # YAML 1.1 reads these as strings
    space = load_space(path)
    assert space.params["train.lr"].args == (1e-5, 1e-3)
    check_space(space, load_config("tiny"))


def test_base_layers_and_metric_checks(tmp_path):
    space = parse_space({"space": {"cai.weight": {"uniform": [0.1, 1.0]}},
                         "base": {"preset": "tiny", "set": {"train.stage2_epochs": 3, "cai.temperature": 0.1}}})
    cfg = prepare_base(space, overrides=["cai.temperature=0.2", "data.root=rel/data"], workers=2)
    assert cfg.preset == "tiny" and cfg.train.stage2_epochs == 3  # the space's base
    assert cfg.cai.temperature == 0.2  # --set wins over the space's base
    assert cfg.dist.workers == 2 and Path(cfg.data.root).is_absolute()  # trials run in their own folders
    assert prepare_base(space).dist.workers == 1  # local mode (0) gives Tune nothing: one worker per trial
    with pytest.raises(ConfigError, match="at least 1 Ray Train worker"):
        prepare_base(space, workers=0)
    with pytest.raises(ConfigError, match="holdout_val"):
        prepare_base(space, overrides=["data.holdout_val=false"])
    with pytest.raises(ConfigError, match="not one a trial reports"):
        prepare_base(parse_space({"space": {"cai.weight": 0.5}, "metric": "test_mAP"}), preset="tiny")
    with pytest.raises(ConfigError, match="cannot be searched"):
        prepare_base(parse_space({"space": {"data.holdout_val": {"choice": [True, False]}}}), preset="tiny")


def test_concurrency_fits_trials_to_the_cluster():
    cpu_trial = trial_need(load_config("tiny", overrides=["dist.workers=1", "dist.cpus_per_worker=0.5"]))
    assert cpu_trial == {"CPU": 0.51, "GPU": 0.0}
    assert concurrency(cpu_trial, {"CPU": 2.0}, trials=8) == 3
    assert concurrency(cpu_trial, {"CPU": 2.0}, trials=2) == 2
    gpu_trial = trial_need(load_config("tiny", overrides=["dist.workers=2", "dist.gpus_per_worker=1"]))
    assert concurrency(gpu_trial, {"CPU": 64.0, "GPU": 8.0}, trials=10) == 4
    assert concurrency(gpu_trial, {"CPU": 64.0, "GPU": 1.0}, trials=10) == 0  # not even one: an error upstream


def test_asha_decides_before_the_last_epoch():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tiny = load_config("tiny")  # 1 + 1 epochs
    space = parse_space({"space": {"cai.weight": {"uniform": [0.1, 1.0]}}})
    sched = make_scheduler(space, tiny)
    assert isinstance(sched, ASHAScheduler) and sched._max_t == 1 and not sched._stop_last_trials
    longer = parse_space({"space": {"train.stage2_epochs": {"choice": [1, 5]}}})
    assert max_epochs(longer, tiny) == 6 and make_scheduler(longer, tiny)._max_t == 5
    one = load_config("tiny", overrides=["train.stage2_epochs=0"])
    assert isinstance(make_scheduler(space, one), FIFOScheduler)


def _h(epoch: int, mAP: float, rank1: float) -> dict:
    return {"epoch": epoch, "val_mAP": mAP, "val_rank1": rank1}


def test_resume_keeps_the_space_and_base_it_started_with(tmp_path):
    space = load_space(ROOT / "tune" / "cai.yaml")
    base = prepare_base(space, preset="tiny")
    sweep = Sweep(name="s", out=tmp_path, base=base, space=space, samples=2)
    with pytest.raises(ConfigError, match="holds no sweep to resume"):
        run_sweep(sweep, resume=True)
    _write_record(sweep)
    (sweep.folder / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    with pytest.raises(ConfigError, match="already holds a sweep"):
        run_sweep(sweep)
    other = load_space(ROOT / "tune" / "cbt.yaml")
    with pytest.raises(ConfigError, match="another search space"):
        run_sweep(Sweep(name="s", out=tmp_path, base=prepare_base(other, preset="tiny"), space=other, samples=2),
                  resume=True)
    with pytest.raises(ConfigError, match="other values of cai.weight"):
        run_sweep(Sweep(name="s", out=tmp_path, base=prepare_base(space, preset="tiny", overrides=["cai.weight=1"]),
                        space=space, samples=2), resume=True)


class _Grid(list):
    num_terminated = 1
    num_errors = 1


def test_an_interrupted_sweep_is_told_apart():
    space = parse_space({"space": {"cai.enabled": {"grid": [True, False]}}})
    sweep = Sweep(name="s", out=Path("."), base=load_config("tiny"), space=space, samples=2)  # 4 trials
    assert unfinished_trials(sweep, _Grid([1, 2])) == 2  # two were never even created
    assert unfinished_trials(sweep, _Grid([1, 2, 3, 4])) == 2
    sweep.samples = 1
    assert unfinished_trials(sweep, _Grid([1, 2])) == 0


def _records():
    return [
        TrialRecord("t0", {"cai.weight": 0.2, "cai.prior": "uniform"}, [_h(1, 20.0, 10.0)]),
        TrialRecord("t1", {"cai.weight": 1.5, "cai.prior": "empirical"}, [_h(1, 21.0, 9.0), _h(2, 25.0, 12.0)]),
        TrialRecord("t2", {"cai.weight": 0.7, "cai.prior": "uniform"}, [_h(1, 30.0, 15.0), _h(2, 22.0, 11.0)]),
        TrialRecord("t3", {"cai.weight": 0.9, "cai.prior": "uniform"}, [], error="WorkerGroupError: boom"),
    ]


def test_result_files_rank_by_best_epoch_and_best_config_loads(tmp_path):
    base = to_dict(load_config("tiny", overrides=["dist.workers=1"]))
    best = write_results(tmp_path, _records(), base, metric="val_mAP", mode="max", name="s", space_file="cai.yaml")
    assert best["trial_id"] == "t2" and best["best_epoch"] == 1  # the best epoch, not the last one
    rows = pq.read_table(tmp_path / TABLE).to_pylist()
    assert [r["trial_id"] for r in rows] == ["t2", "t1", "t0", "t3"]
    by_id = {r["trial_id"]: r for r in rows}
    assert by_id["t0"]["status"] == "stopped early" and by_id["t0"]["epochs"] == 1
    assert by_id["t1"]["status"] == "completed" and by_id["t1"]["final_val_mAP"] == 25.0
    assert by_id["t2"]["best_val_rank1"] == 15.0 and by_id["t2"]["cai.weight"] == 0.7
    assert by_id["t3"]["status"] == "error" and "boom" in by_id["t3"]["error"]
    assert "t2" in (tmp_path / SUMMARY).read_text().split("| 1 |")[1].splitlines()[0]
    cfg = load_config(None, tmp_path / BEST_CONFIG)  # what `dmdl train --config best_config.yaml` does
    assert cfg.preset == "tiny" and cfg.cai.weight == 0.7 and cfg.cai.prior == "uniform"
    assert to_dict(cfg) == to_dict(trial_config(base, {"cai.weight": 0.7, "cai.prior": "uniform"}))
    assert not list(tmp_path.glob("*.tmp"))


def test_min_mode_and_no_metric(tmp_path):
    base = to_dict(load_config("tiny", overrides=["dist.workers=1"]))
    best = write_results(tmp_path, _records(), base, metric="val_rank1", mode="min", name="s", space_file="x")
    assert best["trial_id"] == "t1" and best["best_val_rank1"] == 9.0
    with pytest.raises(SweepError, match="no trial reported val_mAP.*t3: error"):
        write_results(tmp_path / "none", _records()[3:], base, metric="val_mAP", mode="max", name="s", space_file="x")


def _tune_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dmdl")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["tune", *argv])


def test_cli_arguments():
    args = _tune_args(["--space", "tune/cai.yaml", "--samples", "4", "--workers-per-trial", "2", "--preset", "tiny",
                       "--set", "train.seed=3", "--set", "cai.enabled=true", "--name", "s", "--resume"])
    assert (args.samples, args.workers_per_trial, args.preset, args.resume) == (4, 2, "tiny", True)
    assert args.overrides == ["train.seed=3", "cai.enabled=true"] and "tune" in COMMANDS
    with pytest.raises(ConfigError, match="--resume needs the --name"):
        COMMANDS["tune"](_tune_args(["--space", "tune/cai.yaml", "--resume"]))


@pytest.mark.slow
@pytest.mark.dist
def test_tiny_sweep_writes_results_and_resumes_only_the_unfinished_trial(tmp_path, tiny_root):
    """Two 1-worker trials of tune/cai.yaml, one at a time; the first trial's worker is SIGKILLed in epoch 2,
    so the sweep ends with it errored; --resume refits only that trial, which Ray Train resumes."""
    import ray

    marker = tmp_path / "killed"
    env = {"DMDL_CACHE": os.environ["DMDL_CACHE"], "DMDL_FAULT": f"epoch2:0:{marker}"}
    argv = ["--space", str(ROOT / "tune" / "cai.yaml"), "--samples", "2", "--workers-per-trial", "1",
            "--max-concurrent", "1", "--preset", "tiny", "--set", "dist.cpus_per_worker=0.5",
            "--out", str(tmp_path / "sweeps"), "--name", "cai"]
    folder = tmp_path / "sweeps" / "cai"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        t0 = time.perf_counter()
        assert COMMANDS["tune"](_tune_args(argv)) == 0
        t1 = time.perf_counter()
        first = {r["trial_id"]: r for r in pq.read_table(folder / TABLE).to_pylist()}
        lines = {t: (folder / "runs" / t / "metrics.jsonl").read_text() for t in first}
        with pytest.raises(ConfigError, match="already holds a sweep"):
            COMMANDS["tune"](_tune_args(argv))
        assert COMMANDS["tune"](_tune_args([*argv, "--resume"])) == 0
        t2 = time.perf_counter()
    finally:
        ray.shutdown()
    print(f"sweep {t1 - t0:.1f}s, resume {t2 - t1:.1f}s")
    assert marker.exists()
    killed = [t for t, r in first.items() if r["status"] == "error"]
    finished = [t for t, r in first.items() if r["status"] != "error"]
    assert len(killed) == 1 and len(finished) == 1 and first[finished[0]]["best_val_mAP"] is not None
    assert first[killed[0]]["error"].startswith("WorkerGroupError") and first[killed[0]]["epochs"] == 1

    rows = pq.read_table(folder / TABLE).to_pylist()
    assert {r["trial_id"] for r in rows} == set(first)
    assert all(r["status"] in ("completed", "stopped early") and r["error"] is None for r in rows), rows
    # The finished trial was not run again; the killed one went on to its last epoch.
    assert (folder / "runs" / finished[0] / "metrics.jsonl").read_text() == lines[finished[0]]
    epochs = [json.loads(line)["epoch"] for line in (folder / "runs" / killed[0] / "metrics.jsonl").read_text()
              .splitlines()]
    assert epochs[-1] == 2 and set(epochs) == {1, 2}
    assert (folder / "runs" / killed[0] / "results.json").is_file()

    best = rows[0]
    cfg = load_config(None, folder / BEST_CONFIG)
    params = {k: v for k, v in best.items() if k.startswith("cai.")}
    assert set(params) == {"cai.enabled", "cai.weight", "cai.temperature", "cai.prior"}
    for key, value in params.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value
    saved = yaml.safe_load((folder / SWEEP_FILE).read_text())
    assert to_dict(cfg) == to_dict(trial_config(saved["base"], params))
    assert cfg.preset == "tiny" and cfg.dist.workers == 1
    assert best["trial_id"] in (folder / SUMMARY).read_text()
    assert best["trial_id"] in (folder / "report.md").read_text()
    for trial in first:  # one TensorBoard run per trial, to compare them
        assert list((folder / "tb" / trial).glob("events.out.tfevents.*")), trial
