"""Tune sweeps: search-space files as data, the sweep's sizing and scheduler, the shared stage 1, the searches,
the result files, and two real sweeps."""

import argparse
import importlib.util
import json
import os
import queue
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from dmdl_dist.commands.tune import COMMANDS, add_parsers
from dmdl_dist.config import ConfigError, load_config, to_dict
from dmdl_dist.engine import checkpoint as ckpt
from dmdl_dist.errors import DmdlError
from dmdl_dist.tuning.confirm import collect
from dmdl_dist.tuning.results import (
    BEST_CONFIG,
    SUMMARY,
    TABLE,
    SweepError,
    TrialRecord,
    records_from_grid,
    write_results,
)
from dmdl_dist.tuning.schedule import make_scheduler, max_epochs
from dmdl_dist.tuning.search import OptunaMissingError, check_search
from dmdl_dist.tuning.space import check_space, load_space, param_space, parse_space
from dmdl_dist.tuning.stage1 import (
    SharedStage1,
    check_shared_space,
    check_stage1,
    checkpoint_of,
    prepare_stage1,
    shares_stage1,
    stage1_config,
)
from dmdl_dist.tuning.sweep import (
    SWEEP_FILE,
    Sweep,
    _write_record,
    concurrency,
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
    space = parse_space({"space": {"cbt.topk_stage1": {"randint": [1, 6]}}})  # whole trials
    sched = make_scheduler(space, tiny)
    assert isinstance(sched, ASHAScheduler) and sched._max_t == 1 and not sched._stop_last_trials
    assert sched._time_attr == "trial_epoch" and [m for m, _ in sched._brackets[0]._rungs] == [1]
    longer = parse_space({"space": {"train.stage2_epochs": {"choice": [1, 5]}}})
    assert max_epochs(longer, tiny) == 6 and make_scheduler(longer, tiny)._max_t == 5
    one = load_config("tiny", overrides=["train.stage2_epochs=0"])
    assert isinstance(make_scheduler(space, one), FIFOScheduler)


def test_asha_of_a_shared_stage1_counts_stage2_epochs_only():
    """The grace period and the rungs fall on stage-2 epochs: trials are one run until then."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    space = parse_space({"space": {"cai.weight": {"uniform": [0.1, 1.0]}}})
    cfg = load_config("tiny", overrides=["train.stage1_epochs=3", "train.stage2_epochs=4"])
    assert max_epochs(space, cfg) == 7 and max_epochs(space, cfg, shared=True) == 4
    sched = make_scheduler(space, cfg, shared=True)
    assert isinstance(sched, ASHAScheduler) and sched._max_t == 3 and sched._time_attr == "trial_epoch"
    assert [m for m, _ in sched._brackets[0]._rungs] == [1]  # the first stage-2 epoch, not epoch 1 of the run
    assert isinstance(make_scheduler(space, load_config("tiny"), shared=True), FIFOScheduler)  # 1 stage-2 epoch


def test_trial_epoch_is_counted_from_where_the_trial_started():
    from dmdl_dist.tuning.trial import TIME_ATTR, TrialEpochReport

    report = TrialEpochReport.__new__(TrialEpochReport)  # __init__ needs a Tune session
    report.start_epoch = 3  # a trial starting from a 3-epoch shared stage 1
    report._training_actor_item_queue = queue.Queue()
    report.after_report(None, [{"epoch": 4, "val_mAP": 12.5}], None)
    assert report._training_actor_item_queue.get_nowait() == {"epoch": 4, "val_mAP": 12.5, TIME_ATTR: 1}


@pytest.mark.parametrize("params, shared", [
    ({"cai.weight": {"uniform": [0.1, 1.0]}, "cai.prior": {"choice": ["empirical", "uniform"]}}, True),
    ({"cbt.topk_stage2": {"randint": [3, 16]}, "train.stage2_epochs": {"choice": [1, 3]}}, True),
    ({"cai.weight": {"uniform": [0.1, 1.0]}, "train.eval_batch_size": 64}, True),  # a RUN key trains nothing
    ({"cai.weight": {"uniform": [0.1, 1.0]}, "cbt.topk_stage1": {"randint": [1, 6]}}, False),  # stage 1
    ({"cai.weight": {"uniform": [0.1, 1.0]}, "cluster.eps": {"uniform": [0.4, 0.7]}}, False),  # both stages
    ({"train.eval_batch_size": {"choice": [64, 128]}}, False),
])
def test_only_a_space_of_stage2_keys_shares_stage1(params, shared):
    assert shares_stage1(parse_space({"space": params}), load_config("tiny")) is shared


def test_shipped_spaces_share_stage1_where_the_schema_allows():
    tiny = load_config("tiny")
    assert shares_stage1(load_space(ROOT / "tune" / "cai.yaml"), tiny)
    assert not shares_stage1(load_space(ROOT / "tune" / "cbt.yaml"), tiny)  # erase_p, topk_stage1: stage 1
    assert not shares_stage1(load_space(ROOT / "tune" / "clustering.yaml"), tiny)
    assert not shares_stage1(load_space(ROOT / "tune" / "cai.yaml"),
                             load_config("tiny", overrides=["train.stage1_epochs=0"]))


def test_shared_stage1_rules_fail_before_launch(tmp_path):
    tiny = load_config("tiny")
    whole = parse_space({"space": {"cbt.topk_stage1": {"randint": [1, 6]}}}, "s.yaml")
    with pytest.raises(ConfigError, match=r"--stage1 .*s\.yaml searches cbt\.topk_stage1.*stage 1"):
        check_shared_space(whole, tiny, given=True)
    check_shared_space(whole, tiny, given=False)  # whole trials, as before
    zero = parse_space({"space": {"cai.weight": 0.5, "train.stage2_epochs": {"choice": [0, 2]}}})
    with pytest.raises(ConfigError, match="train.stage2_epochs=0"):
        check_shared_space(zero, tiny, given=False)
    space = parse_space({"space": {"cai.weight": {"uniform": [0.1, 1.0]}}})
    with pytest.raises(ConfigError, match="--stage1"):
        prepare_base(space, preset="tiny", overrides=["train.init_from=/x/last.pt"])


def _stage1_checkpoint(path: Path, cfg, epochs: int) -> Path:
    ckpt.save_atomic({"model": {}, "state": {"epoch": epochs, "best_val": 1.0, "best_epoch": 1, "history": []},
                      "config": to_dict(cfg)}, path)
    return path


def test_a_given_stage1_must_be_this_configs_finished_stage1(tmp_path):
    base = load_config("tiny", overrides=["dist.workers=1"])
    run = tmp_path / "run"
    good = _stage1_checkpoint(run / "last.pt", stage1_config(base), epochs=1)
    assert checkpoint_of(run) == good.resolve()  # a run folder means its last.pt
    check_stage1(good, base)
    check_stage1(good, load_config("tiny", overrides=["dist.workers=2", "cai.weight=2.0"]))  # RUN and stage-2 keys
    with pytest.raises(ConfigError, match=r"other values of cluster\.eps, train\.seed"):
        check_stage1(good, load_config("tiny", overrides=["cluster.eps=0.5", "train.seed=7"]))
    with pytest.raises(ConfigError, match="has trained 2 epoch"):
        check_stage1(_stage1_checkpoint(tmp_path / "full.pt", base, epochs=2), base)
    with pytest.raises(ConfigError, match="does not exist"):
        checkpoint_of(tmp_path / "nowhere")
    given = prepare_stage1(base, tmp_path / "sweep", storage_path=str(tmp_path), given=run)  # trains nothing
    assert given == SharedStage1(str(good.resolve()), epochs=1, trained_here=False)
    assert not (tmp_path / "sweep").exists()


def test_optuna_is_an_optional_extra_checked_before_launch(monkeypatch, tmp_path, capsys):
    space = load_space(ROOT / "tune" / "cai.yaml")
    check_search("random", space)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    with pytest.raises(OptunaMissingError, match=r"pip install 'dmdl-dist\[optuna\]'") as err:
        check_search("optuna", space)
    assert isinstance(err.value, DmdlError)
    import ray

    from dmdl_dist.cli import main

    # The CLI refuses in one line, before it starts Ray or trains a stage 1.
    assert main(["tune", "--space", str(ROOT / "tune" / "cai.yaml"), "--preset", "tiny", "--search", "optuna",
                 "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("dmdl tune: error: --search optuna needs the optuna package")
    assert not list(tmp_path.iterdir()) and not ray.is_initialized()
    monkeypatch.undo()
    if importlib.util.find_spec("optuna") is not None:
        grid = parse_space({"space": {"cai.weight": {"grid": [0.2, 0.8]}}}, "g.yaml")
        with pytest.raises(ConfigError, match=r"g\.yaml.*cannot enumerate the grid of cai\.weight"):
            check_search("optuna", grid)


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
    best = write_results(tmp_path, _records(), base, metric="val_mAP", mode="max", name="s", space_file="cai.yaml",
                         rank="best")
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


def test_final_rank_is_the_default_and_puts_finished_trials_first(tmp_path):
    base = to_dict(load_config("tiny", overrides=["dist.workers=1"]))
    best = write_results(tmp_path, _records(), base, metric="val_mAP", mode="max", name="s", space_file="cai.yaml")
    assert best["trial_id"] == "t1" and best["score"] == 25.0  # t2's epoch 1 was better, but it ended lower
    rows = pq.read_table(tmp_path / TABLE).to_pylist()
    assert [r["trial_id"] for r in rows] == ["t1", "t2", "t0", "t3"]  # t0 was stopped at epoch 1: after both
    assert "at its final epoch" in (tmp_path / SUMMARY).read_text()
    assert load_config(None, tmp_path / BEST_CONFIG).cai.weight == 1.5


def test_summary_says_what_a_shared_stage1_saved(tmp_path):
    """Four trials of one stage-2 epoch after a 1-epoch stage 1 trained here: 5 epochs instead of 8."""
    base = to_dict(load_config("tiny", overrides=["dist.workers=1"]))
    records = [TrialRecord(f"t{i}", {"cai.weight": 0.1 * (i + 1)}, [_h(2, 20.0 + i, 10.0)]) for i in range(4)]
    shared = SharedStage1(str(tmp_path / "stage1" / "last.pt"), epochs=1, trained_here=True)
    write_results(tmp_path, records, base, metric="val_mAP", mode="max", name="s", space_file="cai.yaml",
                  stage1=shared, confirmation="seeds line")
    text = (tmp_path / SUMMARY).read_text()
    assert "trained 5 epochs where whole trials would have trained 8: 3 epoch(s) saved (38%)" in text
    assert f"--set train.init_from={shared.path}" in text and "Seeds: seeds line" in text
    given = SharedStage1(shared.path, epochs=1, trained_here=False)  # --stage1: the sweep trained no stage 1
    write_results(tmp_path, records, base, metric="val_mAP", mode="max", name="s", space_file="x", stage1=given)
    assert "trained 4 epochs where whole trials would have trained 8: 4 epoch(s) saved (50%)" in (
        tmp_path / SUMMARY).read_text()


class _Result:
    def __init__(self, trial_id: str, epochs: list[int], error=None):
        import pandas as pd

        self.path = f"/nowhere/trial_{trial_id}"
        self.metrics = {"trial_id": trial_id}
        self.config = {"cai.weight": 0.5}
        self.error = error
        self.metrics_dataframe = pd.DataFrame([{"epoch": e, "val_mAP": 10.0 * e, "val_rank1": 1.0} for e in epochs])


def test_records_hold_the_epochs_a_trial_trained_even_when_tune_missed_the_report(tmp_path):
    """Issue 11 item 14: a worker killed before Ray Train's controller polled its last report (every 2 s)
    takes that report with it; the trial's metrics.jsonl, written once the report call returned, still has it."""
    run = tmp_path / "runs" / "t0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "stage": 1, "val_mAP": 10.0, "val_rank1": 1.0}) + "\n")
    grid = [_Result("t0", [], error=RuntimeError("A worker health check failed")), _Result("t1", [1, 2])]
    by_id = {r.trial_id: r for r in records_from_grid(grid, tmp_path / "runs")}
    assert [h["epoch"] for h in by_id["t0"].history] == [1] and by_id["t0"].error.startswith("RuntimeError")
    assert [h["epoch"] for h in by_id["t1"].history] == [1, 2]  # no run folder: Tune's reports
    assert records_from_grid(grid)[0].history == []
    (run / "metrics.jsonl").write_text('{"epoch": 1, "val_m')  # a line cut by the kill: Tune's reports only
    assert records_from_grid(grid, tmp_path / "runs")[0].history == []


def test_confirmation_gives_mean_and_std_beside_the_sweeps_number():
    records = [TrialRecord("a", {"train.seed": 2}, [_h(1, 50.0, 1.0), _h(2, 30.0, 1.0)]),
               TrialRecord("b", {"train.seed": 1}, [_h(1, 20.0, 1.0), _h(2, 34.0, 1.0)]),
               TrialRecord("c", {"train.seed": 3}, [], error="WorkerGroupError: boom")]
    c = collect(records, [1, 2, 3], metric="val_mAP", mode="max", rank="final", sweep_value=40.0, sweep_seed=0)
    assert c.values == [34.0, 30.0, None] and c.mean == 32.0 and abs(c.std - 2.8284) < 1e-3
    assert "val_mAP 40.00 in the sweep (seed 0)" in c.line() and "32.00 +- 2.83" in c.line()
    assert "34.00, 30.00, -" in c.line()
    best = collect(records, [1, 2], metric="val_mAP", mode="max", rank="best", sweep_value=40.0, sweep_seed=0)
    assert best.values == [34.0, 50.0]
    none = collect(records[2:], [3], metric="val_mAP", mode="max", rank="final", sweep_value=40.0, sweep_seed=0)
    assert none.mean is None and "no run reported it" in none.line() and "boom" in none.line()


def test_min_mode_and_no_metric(tmp_path):
    base = to_dict(load_config("tiny", overrides=["dist.workers=1"]))
    best = write_results(tmp_path, _records(), base, metric="val_rank1", mode="min", name="s", space_file="x",
                         rank="best")
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
    assert (args.search, args.rank, args.stage1, args.confirm_seeds) == ("random", "final", None, 0)
    args = _tune_args(["--space", "s.yaml", "--search", "optuna", "--rank", "best", "--stage1", "runs/s1",
                       "--confirm-seeds", "3"])
    assert (args.search, args.rank, args.stage1, args.confirm_seeds) == ("optuna", "best", "runs/s1", 3)
    with pytest.raises(ConfigError, match="--resume needs the --name"):
        COMMANDS["tune"](_tune_args(["--space", "tune/cai.yaml", "--resume"]))


def _history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _runs_that_trained_stage1(folder: Path) -> list[str]:
    """Run folders of the sweep (the confirmation's whole runs aside) holding a stage-1 epoch record."""
    return sorted(str(m.parent.relative_to(folder)) for m in folder.rglob("metrics.jsonl")
                  if "confirm" not in m.parts and any(r["stage"] == 1 and not r.get("inherited") for r in _history(m)))


@pytest.mark.slow
@pytest.mark.dist
def test_tiny_sweep_writes_results_and_resumes_only_the_unfinished_trial(tmp_path, tiny_root):
    """A stage-2 space: stage 1 is trained by one run, then two 1-worker trials (Optuna's TPE when optuna is
    installed) start their stage 2 from it, one at a time. The first trial's worker is SIGKILLed in its second
    stage-2 epoch (epoch 3), so the sweep ends with it errored; --resume refits only that trial, then trains the
    winner with one other seed (--confirm-seeds 1).

    Nothing here depends on timing (issue 11 item 14): dist.max_failures=0 makes the kill an error (not a
    restart); the killed trial's epochs come from its metrics.jsonl, not from the Tune report a dead worker may
    not have handed over yet; and the trials train alike (CAI off, so cai.weight acts on nothing), so an ASHA
    rung, whether or not it saw the killed trial's report, is a tie that stops nobody."""
    import ray

    search = "optuna" if importlib.util.find_spec("optuna") else "random"
    space = _space_file(tmp_path, {"base": {"preset": "tiny", "set": {"train.stage2_epochs": 2}},
                                   "space": {"cai.enabled": False, "cai.weight": {"choice": [0.2, 0.8]}}})
    marker = tmp_path / "killed"
    env = {"DMDL_CACHE": os.environ["DMDL_CACHE"], "DMDL_FAULT": f"epoch3:0:{marker}"}
    argv = ["--space", str(space), "--samples", "2", "--workers-per-trial", "1", "--max-concurrent", "1",
            "--search", search, "--set", "dist.cpus_per_worker=0.5", "--set", "dist.max_failures=0",
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
        stage1_lines = (folder / "stage1" / "metrics.jsonl").read_text()
        with pytest.raises(ConfigError, match="already holds a sweep"):
            COMMANDS["tune"](_tune_args(argv))
        assert COMMANDS["tune"](_tune_args([*argv, "--resume", "--confirm-seeds", "1"])) == 0
        t2 = time.perf_counter()
    finally:
        ray.shutdown()
    print(f"sweep {t1 - t0:.1f}s, resume and confirmation {t2 - t1:.1f}s")
    assert marker.exists() and yaml.safe_load((folder / SWEEP_FILE).read_text())["search"] == search
    killed = [t for t, r in first.items() if r["status"] == "error"]
    finished = [t for t, r in first.items() if r["status"] != "error"]
    assert len(killed) == 1 and len(finished) == 1 and first[finished[0]]["final_val_mAP"] is not None
    assert first[killed[0]]["error"].startswith("WorkerGroupError")
    assert first[killed[0]]["epochs"] == 2 and first[killed[0]]["first_epoch"] == 2  # its first stage-2 epoch

    rows = pq.read_table(folder / TABLE).to_pylist()
    assert {r["trial_id"] for r in rows} == set(first)
    assert all(r["status"] == "completed" and r["error"] is None for r in rows), rows
    # The finished trial was not run again, nor was stage 1; the killed trial went on to its last epoch.
    assert (folder / "runs" / finished[0] / "metrics.jsonl").read_text() == lines[finished[0]]
    assert (folder / "stage1" / "metrics.jsonl").read_text() == stage1_lines
    assert _runs_that_trained_stage1(folder) == ["stage1"]  # once, not once per trial
    records = _history(folder / "runs" / killed[0] / "metrics.jsonl")
    assert [r["epoch"] for r in records if r.get("inherited")] == [1]  # stage 1's record, marked as inherited
    epochs = [r["epoch"] for r in records if not r.get("inherited")]
    assert epochs[-1] == 3 and set(epochs) == {2, 3}
    assert (folder / "runs" / killed[0] / "results.json").is_file()
    stage1 = str(folder.resolve() / "stage1" / "last.pt")
    starts = []
    for trial in first:
        run = folder / "runs" / trial
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["init_from"] == stage1
        start = next(r for r in _history(run / "metrics.jsonl") if not r.get("inherited"))
        assert start["epoch"] == 2 and start["stage"] == 2
        # The first stage-2 refresh clusters the features of the weights the trial starts from.
        starts.append((start["clusters"], start["outliers"], start["num_shared"], start["labels_digest"]))
    assert starts[0] == starts[1]

    best = rows[0]
    cfg = load_config(None, folder / BEST_CONFIG)
    params = {k: v for k, v in best.items() if k.startswith("cai.")}
    assert set(params) == {"cai.enabled", "cai.weight"}
    for key, value in params.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value
    saved = yaml.safe_load((folder / SWEEP_FILE).read_text())
    assert to_dict(cfg) == to_dict(trial_config(saved["base"], params))
    assert cfg.preset == "tiny" and cfg.dist.workers == 1 and cfg.train.init_from is None  # from scratch
    summary = (folder / SUMMARY).read_text()
    assert best["trial_id"] in summary and "Shared stage 1" in summary
    assert best["trial_id"] in (folder / "report.md").read_text()
    for trial in first:  # one TensorBoard run per trial, to compare them
        assert list((folder / "tb" / trial).glob("events.out.tfevents.*")), trial
    # --confirm-seeds 1: a whole run (the seed acts in stage 1 too) of the winner with seed 1, beside the sweep's.
    seeds = next(line for line in summary.splitlines() if line.startswith("Seeds:"))
    assert f"final val_mAP {best['final_val_mAP']:.2f} in the sweep (seed 0)" in seeds
    assert "trained again with seeds 1: " in seeds and " +- 0.00 (mean +- std of 1 run(s)" in seeds
    confirm = [_history(m) for m in (folder / "confirm" / "runs").glob("*/metrics.jsonl")]
    assert len(confirm) == 1 and [r["stage"] for r in confirm[0]] == [1, 2, 2]
