"""Issue 11 (trust): no code runs from a checkpoint, no run corrupts another, every user error is one clear line."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from trust_trees import make_sysu, save_checkpoint, save_malicious, write_image

from dmdl_dist.cli import main
from dmdl_dist.commands.train import resume_config
from dmdl_dist.config import ConfigError, load_config, load_run_config, save_config
from dmdl_dist.engine import checkpoint as ckpt
from dmdl_dist.engine.atomic import atomic_path, remove_orphans, temporary_name, write_text
from dmdl_dist.engine.run_lock import LOCK, RunLockedError, run_lock
from dmdl_dist.errors import DmdlError, WriteError
from dmdl_dist.memory.io import load_memory_shards


def _one_error_line(capsys, command: str) -> str:
    """The CLI's stderr, asserted to be exactly one `dmdl <command>: error: ...` line (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"dmdl {command}: error: "), err
    return err


def _error_paragraph(capsys, command: str) -> str:
    """The CLI's stderr, asserted to be one `dmdl <command>: error: ...` paragraph (e.g. with a layout tree)."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dmdl {command}: error: ") and "Traceback" not in err and "\n\n" not in err, err
    return err


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped) on this host."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


# --- 1. no code runs from a checkpoint ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["eval", "extract", "export", "search", "train --resume"])
def test_a_malicious_checkpoint_runs_nothing_and_is_one_error_line(tmp_path, capsys, command):
    marker = tmp_path / "code_ran"
    evil = save_malicious(tmp_path / "run" / "last.pt", marker)
    root = make_sysu(tmp_path / "sysu", training=False)
    write_image(tmp_path / "gallery" / "a.png", 1)
    write_image(tmp_path / "query.png", 2)
    save_config(load_config("tiny"), tmp_path / "run" / "config.yaml")
    argv = {
        "eval": ["eval", "--checkpoint", str(evil), "--dataset", "sysu", "--root", str(root)],
        "extract": ["extract", "--checkpoint", str(evil), "--dataset", "sysu", "--root", str(root),
                    "--out", str(tmp_path / "f.parquet")],
        "export": ["export", "--checkpoint", str(evil), "--format", "torchscript", "--out", str(tmp_path / "m.ts.pt")],
        "search": ["search", "--checkpoint", str(evil), "--gallery", str(tmp_path / "gallery"),
                   "--query", str(tmp_path / "query.png"), "--no-progress"],
        "train --resume": ["train", "--resume", str(tmp_path / "run"), "--no-progress"],
    }[command]
    assert main(argv) == 2
    err = _one_error_line(capsys, command.split()[0])
    assert not marker.exists()  # before: weights_only=False ran os.system here
    assert f"checkpoint {evil} refused" in err and "system" in err
    assert not list(tmp_path.glob("f.parquet")) and not list(tmp_path.glob("m.ts.pt"))


def test_memory_shards_load_without_pickled_code(tmp_path):
    marker = tmp_path / "code_ran"
    save_malicious(tmp_path / "ckpt" / "memory_rank0.pt", marker)
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        load_memory_shards(tmp_path / "ckpt", 0, 1)
    assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt")
    payload = torch.load(path, weights_only=True)  # what every loader does now
    assert isinstance(payload["config"]["train"]["lr"], float)


def test_a_checkpoint_of_another_network_is_one_error_naming_both(tmp_path, capsys):
    # weights of the non-local network under a config that builds the plain one
    path = save_checkpoint(tmp_path / "best.pt", non_local=True)
    payload = torch.load(path, weights_only=True)
    payload["config"]["model"]["non_local"] = False
    ckpt.save_atomic(payload, path)
    assert main(["export", "--checkpoint", str(path), "--format", "torchscript"]) == 2
    err = _one_error_line(capsys, "export")
    assert "another network than the one its config builds (model.arch=small, model.non_local=False)" in err
    assert "size mismatch" not in err
    assert "unknown tensors" in err


# --- 5. one run per run folder -------------------------------------------------------------------------------------

def test_a_second_run_on_a_locked_folder_is_refused_and_the_lock_goes_with_the_run(tmp_path, capsys):
    run = tmp_path / "r"
    holder = ("import sys\nfrom dmdl_dist.engine.run_lock import run_lock\n"
              "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert main(["train", "--preset", "tiny", "--out", str(tmp_path), "--name", "r", "--no-progress"]) == 2
        err = _one_error_line(capsys, "train")
        assert f"{run} is in use by another run (process {proc.pid} on {socket.gethostname()}" in err
        assert (run / LOCK).is_file()  # the refused run removed neither the lock nor the folder
    finally:
        proc.stdin.close()
        proc.wait()
    assert not (run / LOCK).exists()  # the holder's lock went with it
    with run_lock(run):
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    assert not (run / LOCK).exists()


def test_a_lock_of_a_process_that_is_gone_is_taken_over(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "x"}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()


def test_a_lock_held_on_another_machine_is_refused_with_the_way_out(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "today"}))
    with pytest.raises(RunLockedError, match=f"on another machine .*delete {tmp_path / LOCK}"):
        with run_lock(tmp_path):
            pass
    assert (tmp_path / LOCK).is_file()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError), run_lock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK).exists()
    with run_lock(tmp_path), pytest.raises(RunLockedError, match="in use"):  # our own second run is refused too
        with run_lock(tmp_path):
            pass


# --- 13. orphaned temporary files ------------------------------------------------------------------------------------

def test_orphaned_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    orphans = [temporary_name(tmp_path / "last.pt", dead), temporary_name(tmp_path / "gap" / "stage1.npz", dead)]
    live = temporary_name(tmp_path / "results.json", alive)
    keep = [tmp_path / "last.pt", tmp_path / ".last.pt.tmp-notapid", tmp_path / "config.yaml.tmp"]
    for f in [*orphans, live, *keep]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    assert sorted(remove_orphans(tmp_path)) == sorted(orphans)
    assert live.exists() and all(f.exists() for f in keep)
    assert remove_orphans(tmp_path, every=True) == [live]  # the run holds the lock: every writer is gone
    assert all(f.exists() for f in keep)


# --- 12. clear errors: writes ---------------------------------------------------------------------------------------

class _FullDisk:
    """A file object on a disk with `room` bytes free: a write beyond them raises ENOSPC, as the kernel does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


@pytest.mark.parametrize("room", [0, 100, 5000])  # the first write fails, a later one, one inside a tensor
def test_a_full_disk_names_the_file_and_enospc_and_keeps_the_checkpoint(tmp_path, monkeypatch, room):
    path = tmp_path / ckpt.LAST
    ckpt.save_atomic({"epoch": 1, "w": torch.ones(4)}, path)
    monkeypatch.setattr(ckpt, "open", lambda file, mode="r": _FullDisk(open(file, mode), room), raising=False)
    with pytest.raises(WriteError) as err:
        ckpt.save_atomic({"epoch": 2, "w": torch.ones(10_000)}, path)
    assert err.value.errno == errno.ENOSPC  # before: RuntimeError "basic_ios::clear" / "unexpected pos"
    assert str(err.value).startswith(f"cannot write {path}: No space left on device (ENOSPC); the previous last.pt "
                                      "is intact")
    assert isinstance(err.value, DmdlError) and len(str(err.value).splitlines()) == 1
    monkeypatch.undo()
    assert ckpt.load(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == [ckpt.LAST]


def test_a_write_refused_inside_a_library_is_still_one_clear_error(tmp_path):
    with pytest.raises(WriteError, match=r"cannot write .*m.onnx: Read-only file system \(EROFS\); nothing was"):
        with atomic_path(tmp_path / "m.onnx"):
            try:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            except OSError as cause:
                raise RuntimeError("exporter failed") from cause  # what torch.onnx does with it
    assert not list(tmp_path.iterdir())
    with pytest.raises(KeyError):  # anything else is not a write problem and passes unchanged
        with atomic_path(tmp_path / "x.json"):
            raise KeyError("bug")


def test_export_to_a_folder_that_cannot_be_written_is_one_error_before_any_work(tmp_path, capsys, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / "best.pt")
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                 "--out", str(tmp_path / "a_file" / "m.ts.pt")]) == 2
    assert f"cannot write {tmp_path / 'a_file' / 'm.ts.pt'}" in _one_error_line(capsys, "export")

    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_touch = pathlib.Path.touch

    def touch(self, *args, **kwargs):  # a read-only mount (chmod does not stop root, who may run the tests)
        if self.parent == readonly:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_touch(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "touch", touch)
    loads = []
    monkeypatch.setattr(ckpt, "load", lambda *a, **k: loads.append(1))
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                 "--out", str(readonly / "m.ts.pt")]) == 2
    err = _one_error_line(capsys, "export")
    assert "Read-only file system (EROFS); nothing was written; choose a folder you can write to" in err
    assert not loads and not list(readonly.iterdir())  # refused before the checkpoint was read


def test_write_text_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_text(tmp_path / "results.json", "old")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.raises(WriteError, match="No space left on device"):
        write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


# --- 12. clear errors: config files ---------------------------------------------------------------------------------

def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n  seed: [1, 2\ncai:\n  weight: 1\n")
    with pytest.raises(ConfigError, match=rf"config file {bad}, line \d+, column \d+ is not valid YAML"):
        load_config(config_file=bad)


def test_a_base_cycle_through_dotdot_is_found(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.yaml").write_text("_base_: ../a/y.yaml\n")
    (tmp_path / "a" / "y.yaml").write_text("_base_: ../a/./x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):  # before: RecursionError
        load_config(config_file=tmp_path / "a" / "x.yaml")


def test_a_missing_base_names_the_file_that_refers_to_it(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("_base_: gone.yaml\n")
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'gone.yaml'} does not exist \\(the _base_ of "
                                          f"{child}\\)"):
        load_config(config_file=child)


def test_a_broken_run_config_names_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("train: {lr: 0.1\n")
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'config.yaml'}, line"):
        load_run_config(tmp_path)


# --- 12. missing extras, failed starts ---------------------------------------------------------------------------

def test_a_missing_faiss_is_reported_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    write_image(tmp_path / "gallery" / "a.png", 1)
    assert main(["search", "--checkpoint", str(tmp_path / "absent.pt"), "--gallery", str(tmp_path / "gallery"),
                 "--query", str(tmp_path / "absent.png")]) == 2
    err = _one_error_line(capsys, "search")  # not "no checkpoint" or "no query": faiss is checked first
    assert "needs faiss" in err and "pip install 'dmdl-dist[cpu]'" in err
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "runs"), "--name", "r",
                 "--set", "cluster.knn_backend=faiss"]) == 2
    assert "cluster.knn_backend=faiss needs faiss" in _one_error_line(capsys, "train")
    assert not (tmp_path / "runs").exists()


def test_a_run_that_fails_at_the_start_leaves_no_folder(tmp_path, capsys):
    root = make_sysu(tmp_path / "sysu", training=False)
    assert main(["train", "--preset", "tiny", "--set", "data.dataset=sysu", "--set", f"data.root={root}",
                 "--out", str(tmp_path / "runs"), "--name", "r", "--no-progress"]) == 2
    err = _error_paragraph(capsys, "train")
    assert "holds no training images" in err and "exp/train_id.txt" in err
    assert not (tmp_path / "runs" / "r").exists()


# --- 8. resume -------------------------------------------------------------------------------------------------------

@pytest.fixture
def run_with_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config("tiny"), run / "config.yaml")
    save_checkpoint(run / ckpt.LAST)
    return run


def test_resume_without_a_checkpoint_says_it_starts_over(tmp_path, capsys):
    save_config(load_config("tiny"), tmp_path / "config.yaml")
    cfg = resume_config(tmp_path, [])
    assert cfg.preset == "tiny"
    assert "no checkpoint (last.pt): no epoch of it finished, so it starts from epoch 1" in capsys.readouterr().err


def test_resume_refuses_a_changed_config_and_lists_the_keys(run_with_checkpoint, capsys):
    run = run_with_checkpoint
    assert resume_config(run, ["train.device=cpu", "run.report=false"]).train.device == "cpu"  # keys of stage RUN
    with pytest.raises(ConfigError, match=r"\(cbt\.mmd_weight: 1\.0 -> 2\.0; train\.lr: 0\.001 -> 0\.002\).*"
                                          "--force-config"):
        resume_config(run, ["train.lr=2e-3", "cbt.mmd_weight=2"])
    edited = yaml.safe_load((run / "config.yaml").read_text())
    edited["train"]["seed"] = 7  # a hand-edited config.yaml counts as well
    (run / "config.yaml").write_text(yaml.safe_dump(edited))
    with pytest.raises(ConfigError, match=r"train\.seed: 0 -> 7"):
        resume_config(run, [])
    assert resume_config(run, [], force=True).train.seed == 7
    assert "--force-config: " in capsys.readouterr().err
    # through the CLI: one line, and the run folder is left as it was
    assert main(["train", "--resume", str(run), "--set", "train.lr=2e-3"]) == 2
    assert "train.lr: 0.001 -> 0.002" in _one_error_line(capsys, "train")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pt"]


def test_resume_cannot_force_another_network(run_with_checkpoint, capsys):
    assert main(["train", "--resume", str(run_with_checkpoint), "--set", "model.non_local=true",
                 "--force-config"]) == 2
    err = _one_error_line(capsys, "train")
    assert "holds a network of model.arch=small, model.non_local=False" in err and "model.non_local=True" in err


# --- everything a user can fix is a DmdlError ---------------------------------------------------------------------

def test_user_errors_derive_from_dmdl_error():
    from dmdl_dist.data.images import BadImagesError
    from dmdl_dist.data.layout import DatasetLayoutError
    from dmdl_dist.eval.metrics import ProtocolError
    from dmdl_dist.eval.run import FeaturesFileError, MissingFeaturesError
    from dmdl_dist.serve.export import ExportError, MissingExtraError
    from dmdl_dist.serve.gallery_index import EmptyGalleryError
    from dmdl_dist.serve.search import GalleryImagesError, QueryImageError
    from dmdl_dist.tuning.results import SweepError

    for cls in (ConfigError, BadImagesError, ckpt.CheckpointError, MissingFeaturesError, FeaturesFileError,
                DatasetLayoutError, MissingExtraError, EmptyGalleryError, GalleryImagesError, QueryImageError,
                SweepError, ExportError, ProtocolError, WriteError, RunLockedError):
        assert issubclass(cls, DmdlError), cls


# --- end to end: a forced resume of a real run ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_forced_resume_trains_on_saves_its_config_and_clears_orphans(tmp_path, tiny_root, capsys):
    from dmdl_dist.engine.trainer import train

    run = tmp_path / "run"
    cfg = load_config("tiny", overrides=["run.report=false"])
    assert train(cfg, run, progress=False, echo=lambda *a, **k: None, stop_after=1) == {"stopped_at": 1}
    payload = torch.load(run / ckpt.LAST, weights_only=True)  # the trainer's state is plain values only
    _assert_plain(payload["state"])
    _assert_plain(payload["config"])
    orphan = temporary_name(run / ckpt.LAST, _dead_pid())
    orphan.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run), "--set", "train.lr=2e-3", "--force-config", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "continues with train.lr: 0.001 -> 0.002" in err and "removed 1 temporary file" in err
    assert not orphan.exists() and not (run / LOCK).exists()
    assert load_run_config(run).train.lr == pytest.approx(2e-3)  # config.yaml says what the run trained with
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "results.json").is_file()


def _assert_plain(value) -> None:
    """Dicts, lists, strings, numbers, booleans and None only, all the way down (no numpy scalar)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), k
            _assert_plain(v)
    elif isinstance(value, list):
        for v in value:
            _assert_plain(v)
    else:
        assert value is None or type(value) in (str, int, float, bool), (value, type(value))
