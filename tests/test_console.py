"""What a person sees: the console of a Ray run, the CLI's one error path, `dmdl config`, where Ray listens."""

import json
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from dmdl_dist import cli, logs
from dmdl_dist.config import ConfigError, load_config, schema_keys, to_dict

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    """The environment of a `dmdl` subprocess: this checkout first, the session's data cache."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


# ---------------------------------------------------------------- routing rules (no Ray)


def test_console_thresholds_by_logger():
    assert logs.console_threshold("dmdl_dist") == logging.INFO
    assert logs.console_threshold("dmdl_dist.engine") == logging.INFO
    for quiet in ("ray", "ray.train.v2._internal.execution.context", "faiss.loader", "DeepSpeed",
                  "torch.utils.cpp_extension"):
        assert logs.console_threshold(quiet) == logging.ERROR, quiet
    assert logs.console_threshold("py.warnings") == logging.WARNING
    assert logs.console_threshold("rayx") == logging.WARNING  # a prefix of a name is not its package
    assert logs.console_threshold("ray.tune", verbose=True) == logging.DEBUG


def test_console_filter_leaves_what_the_driver_explains_to_the_log_file():
    f = logs.ConsoleFilter(explained=lambda err: isinstance(err, ConfigError))

    def record(level=logging.ERROR, name="ray.train"):
        return logging.LogRecord(name, level, __file__, 1, "Error in training function", None, None)

    assert f.filter(record())
    assert not f.filter(record(logging.WARNING))
    try:
        raise ConfigError("bad input")
    except ConfigError:
        assert not f.filter(record())  # logged while the driver's one-paragraph error is being handled
    try:
        raise ZeroDivisionError("a bug")
    except ZeroDivisionError:
        assert f.filter(record())  # a bug's traceback reaches the console


def test_python_warnings_belong_to_the_package_that_issued_them(monkeypatch, caplog):
    assert logs.warning_logger("/v/lib/python3.11/site-packages/torch/distributed/c10d_logger.py") == "torch"
    assert logs.warning_logger(str(ROOT / "dmdl_dist" / "engine" / "trainer.py")) == "dmdl_dist"
    assert logs.warning_logger("/home/me/script.py") == "py.warnings"
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("always")
        logs.capture_warnings()
        warnings.warn_explicit("deprecated", FutureWarning, "/v/site-packages/torch/x.py", 3)
    assert [(r.name, "FutureWarning: deprecated" in r.getMessage()) for r in caplog.records] == [("torch", True)]


def test_line_logger_logs_each_printed_line(caplog):
    with caplog.at_level(logging.INFO, logger="stdout"):
        stream = logs.LineLogger(logging.getLogger("stdout"))
        print("DeepSpeed op built successfully\npart", end="", file=stream)
        print(" two", file=stream)
    assert [r.getMessage() for r in caplog.records] == ["DeepSpeed op built successfully", "part two"]


# ---------------------------------------------------------------- the CLI


def test_help_describes_the_tool_and_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "visible-infrared" in out and "dmdl train --preset tiny" in out and "--verbose" in out
    assert "dispatches" not in out  # not the module's developer docstring
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert re.fullmatch(r"dmdl \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_config_keys_cover_every_schema_field(capsys):
    assert cli.main(["config", "--keys"]) == 0
    out = capsys.readouterr().out
    entries = {line.split(" ", 1)[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    keys = schema_keys()
    assert set(entries) == {k.key for k in keys}
    for info in keys:
        assert f"({info.type}, default {json.dumps(info.default)};" in entries[info.key], info.key
        assert " ".join(info.doc.split()[:4]) in " ".join(out.split()), info.key  # its meaning, re-wrapped


def test_config_prints_the_resolved_config_as_yaml_that_loads_back(capsys, tmp_path):
    assert cli.main(["config", "--preset", "tiny", "--set", "train.lr=0.001", "--set", "cai.weight=0.25"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config("tiny", overrides=["train.lr=0.001", "cai.weight=0.25"])
    assert printed == to_dict(expected)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(printed))
    assert to_dict(load_config(config_file=tmp_path / "c.yaml")) == to_dict(expected)


@pytest.fixture
def config_handler(monkeypatch):
    """Replaces the `config` command's handler; returns a setter for the exception it raises."""
    from dmdl_dist.commands import config as config_command

    def set_error(err):
        def handler(args):
            raise err

        monkeypatch.setitem(config_command.COMMANDS, "config", handler)

    return set_error


def test_expected_errors_are_one_paragraph_and_exit_2(config_handler, capsys):
    config_handler(ConfigError("data.root=/x does not exist\npoint data.root at the data set"))
    assert cli.main(["config"]) == 2
    err = capsys.readouterr().err
    assert err == "dmdl config: error: data.root=/x does not exist\n  point data.root at the data set\n"


def test_a_bug_shows_its_traceback_and_debug_shows_every_one(config_handler):
    config_handler(KeyError("a bug"))
    with pytest.raises(KeyError):
        cli.main(["config"])
    config_handler(ConfigError("expected"))
    with pytest.raises(ConfigError):
        cli.main(["config", "--debug"])
    with pytest.raises(ConfigError):
        cli.main(["--debug", "config"])


def test_a_user_error_raised_in_a_ray_worker_is_unwrapped(config_handler, capsys):
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    wrapped = WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(ConfigError("no such data"), "tb")})
    config_handler(wrapped)
    assert cli.main(["config"]) == 2
    assert capsys.readouterr().err == "dmdl config: error: no such data\n"


def test_a_dead_worker_is_one_paragraph_with_the_resume_command(tmp_path):
    """A killed worker (its group failed with no restart left): which worker, the last checkpointed epoch,
    the exact command; the survivors' broken collectives are consequences, not news."""
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback, WorkerHealthCheckFailedError

    from dmdl_dist.distributed.launcher import WorkerLost, explained_by_driver, run_failure

    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:50086")
    err = WorkerGroupError("...", {0: UserExceptionWithTraceback(gloo, "tb"),
                                   1: WorkerHealthCheckFailedError("health check failed", ActorDiedError())})
    lost = run_failure(err, tmp_path / "run", last_epoch=1, max_failures=3, address="10.0.0.1:6379")
    assert isinstance(lost, WorkerLost) and lost.exit_code == 1
    text = str(lost)
    assert "worker 1 died in epoch 2" in text and "after 3 restarts" in text
    assert "the last checkpointed epoch is 1" in text
    assert f"dmdl train --resume {tmp_path / 'run'} --address 10.0.0.1:6379" in text
    assert explained_by_driver(gloo) and not explained_by_driver(ZeroDivisionError("a bug"))
    bug = WorkerGroupError("...", {0: UserExceptionWithTraceback(ZeroDivisionError("a bug"), "tb")})
    assert run_failure(bug, tmp_path, last_epoch=1, max_failures=3) is bug  # a bug keeps its traceback


def test_restart_and_trial_lines():
    from types import SimpleNamespace

    from dmdl_dist.distributed.progress import restart_line, trial_printer

    gloo = "raised RuntimeError: Connection closed by peer"
    assert restart_line({0: gloo, 1: "died"}, 1, 1, 3) == (
        "worker 1 died; restarting the worker group from epoch 1's checkpoint (restart 1 of 3)")
    assert restart_line({0: "raised KeyError: 'x'", 1: "raised KeyError: 'x'"}, 0, 2, 3) == (
        "worker 0, 1 raised KeyError: 'x'; restarting the worker group from the start (restart 2 of 3)")
    lines = []
    printer = trial_printer(4, out=SimpleNamespace(write=lines.append, flush=lambda: None))
    trial = SimpleNamespace(trial_id="t_00001", config={"cai.weight": 0.123456, "cai.enabled": True}, path="/p")
    printer.on_trial_start(0, [], trial)
    printer.on_trial_result(0, [], trial, {"epoch": 2, "val_mAP": 30.04, "val_rank1": 12.0})
    printer.on_trial_error(0, [], trial)
    assert "".join(lines).splitlines() == ["trial t_00001 started: cai.enabled=True, cai.weight=0.1235",
                                           "trial t_00001 epoch 2/4 | val R1 12.0 mAP 30.0",
                                           "trial t_00001 failed (its error: /p)"]


# ---------------------------------------------------------------- Ray: what listens, what the console shows

PROBE = """
import json, sys
import psutil
from dmdl_dist.distributed.launcher import connect
where = connect()
import ray
ray.get(ray.remote(lambda: 1).remote())  # a worker process too
tree = [psutil.Process(), *psutil.Process().children(recursive=True)]
listening = sorted({c.laddr.ip for p in tree for c in p.net_connections("tcp") if c.status == "LISTEN"})
print(json.dumps({"where": where, "listening": listening}))
ray.shutdown()
"""


@pytest.mark.dist
def test_a_cluster_dmdl_starts_listens_on_loopback_only(tmp_path):
    """gcs_server, raylet, the driver and the workers: with dist.bind's default every listening socket of the
    cluster dmdl starts is on 127.0.0.1 (Ray 2.60 binds *:port otherwise). RAY_ADDRESS would join instead."""
    env = _env()
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["where"] == "private Ray on 127.0.0.1"
    assert probe["listening"] and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in probe["listening"]), probe


EPOCH = re.compile(r"^epoch +(\d+)/2 \[stage [12]\] .* \| [0-9.]+ min$")
WARNED = re.compile(r"^epoch [12]: degenerate clustering \(.+\); training on it learns little\. ")
TINY_EPS = load_config("tiny").cluster.eps


@pytest.mark.slow
@pytest.mark.dist
def test_two_worker_run_console_is_start_line_epochs_table_and_report(tmp_path, tiny_root):
    """`dmdl train --preset tiny --workers 2` as a person runs it: nothing on the console but the start
    line, one line per epoch, the test table and the report line; Ray's, faiss's and torch's records are
    in RUN_DIR/logs/."""
    run = tmp_path / "runs" / "r"
    out = subprocess.run(
        [sys.executable, "-m", "dmdl_dist.cli", "train", "--preset", "tiny", "--workers", "2",
         "--set", "dist.cpus_per_worker=0.5", "--out", str(run.parent), "--name", run.name],
        env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert out.returncode == 0, out.stdout
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    start, *rest = lines
    assert start.startswith("2 Ray workers (cpu, 0.5 CPU each), ddp, fp32, private Ray on 127.0.0.1 -> ")
    assert start.endswith(f"(log: {run / 'logs'}/)")
    # tiny's first clustering is degenerate: the driver says so once, in local mode's words, before that epoch
    warned = [line for line in rest if WARNED.match(line)]
    assert all(f"lower cluster.eps (now {TINY_EPS})" in line for line in warned), warned
    rest = [line for line in rest if not WARNED.match(line)]
    epochs = [int(m.group(1)) for m in map(EPOCH.match, rest) if m]
    assert epochs == [1, 2], out.stdout
    table = rest[len(epochs):]
    assert table[0].startswith("model: ") and table[1].startswith("protocol ")
    assert [t.split()[0] for t in table[2:-1]] == ["synthvi-all"]
    assert table[-1] == f"report: {run / 'report.md'}"
    worker_log = (run / "logs" / "worker-0.log").read_text()
    assert "faiss.loader" in worker_log and "Reporting training result" in worker_log
    assert bool(warned) == ("degenerate clustering" in worker_log)  # rank 0's warning, shown by the driver


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, cache_dir):
    """One Ray cluster for the failure tests, set up as `dmdl` sets up its own; rank 1 is killed in its
    second epoch, once (DMDL_FAULT), which only the run that trains a second epoch reaches."""
    import ray

    from dmdl_dist.distributed.launcher import PRIVATE_CLUSTER_ENV

    marker = tmp_path_factory.mktemp("fault") / "killed"
    env = {"DMDL_CACHE": str(cache_dir), "DMDL_FAULT": f"epoch2:1:{marker}", **PRIVATE_CLUSTER_ENV}
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    yield marker
    ray.shutdown()


def _inject(monkeypatch, error: BaseException) -> None:
    """The training function raises `error` inside every Ray worker (after the worker set up its logging)."""
    import ray.cloudpickle

    import dmdl_dist.distributed.launcher as launcher

    real = launcher._worker

    def worker(loop_config):
        import dmdl_dist.engine.trainer as trainer

        def train(*args, **kwargs):
            raise error

        trainer.train = train
        return real(loop_config)

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file
    monkeypatch.setattr(launcher, "_worker", worker)


TINY = ["train", "--preset", "tiny", "--workers", "2", "--set", "dist.cpus_per_worker=0.5"]


@pytest.mark.slow
@pytest.mark.dist
def test_a_worker_that_raises_still_shows_its_traceback(ray_cluster, tiny_root, tmp_path, monkeypatch, capfd):
    _inject(monkeypatch, ZeroDivisionError("boom in a worker"))
    with pytest.raises(Exception) as bug:  # the interpreter prints it: the worker's frames and error included
        cli.main([*TINY, "--set", "dist.max_failures=0", "--out", str(tmp_path), "--name", "bug"])
    assert "Traceback (most recent call last)" in str(bug.value) and "ZeroDivisionError: boom in a worker" in str(
        bug.value)
    # the worker's own console copy of the traceback reaches the driver later, through Ray's log forwarding:
    # wait for it here, so that it shows up in this test's output and not in the next one's
    seen, deadline = "", time.monotonic() + 30
    while "boom in a worker" not in seen and time.monotonic() < deadline:
        time.sleep(0.5)
        seen += "".join(capfd.readouterr())
    assert "ZeroDivisionError: boom in a worker" in seen


@pytest.mark.slow
@pytest.mark.dist
def test_a_user_error_in_a_worker_is_one_paragraph_not_retried(ray_cluster, tiny_root, tmp_path, monkeypatch,
                                                                capfd):
    _inject(monkeypatch, ConfigError("data.root=/nowhere does not exist; point it at the data set"))
    assert cli.main([*TINY, "--out", str(tmp_path), "--name", "user"]) == 2  # dist.max_failures is 3: not used
    out, err = capfd.readouterr()
    assert "dmdl train: error: data.root=/nowhere does not exist; point it at the data set\n" in err
    assert "Traceback" not in out + err and "restarting" not in err


@pytest.mark.slow
@pytest.mark.dist
def test_killed_worker_without_restarts_is_one_paragraph_and_resume_records_each_epoch_once(
        ray_cluster, tiny_root, tmp_path, capfd):
    run = tmp_path / "kill"
    assert cli.main([*TINY, "--set", "dist.max_failures=0", "--out", str(tmp_path), "--name", "kill"]) == 1
    out, err = capfd.readouterr()
    assert ray_cluster.exists()  # rank 1 really was killed
    assert "Traceback" not in out + err and "Connection closed by peer" not in out + err
    paragraph = err[err.index("dmdl train: error: "):]
    assert "Ray worker 1 died in epoch 2" in paragraph and "the last checkpointed epoch is 1" in paragraph
    assert f"dmdl train --resume {run}\n" in paragraph

    assert cli.main(["train", "--resume", str(run)]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert (run / "results.json").is_file()
