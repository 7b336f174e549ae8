"""Distributed pieces: the clustering service across 2 gloo ranks, and a 2-worker Ray Train run."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmdl_dist.config import load_config

pytestmark = pytest.mark.dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refresh_worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    os.environ["DMDL_CACHE"] = cache
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from dmdl_dist.engine.data import load_run_data
    from dmdl_dist.engine.recluster import refresh
    from dmdl_dist.models.backbone import build_model

    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = build_model("small")
    data = load_run_data(cfg)
    ref = refresh(model, str(data.root), data.train_paths, data.train_pids, cfg, stage=2, epoch_in_stage=0,
                  device=torch.device("cpu"), progress=False)
    np.savez(f"{out}/rank{rank}_world{world}.npz", v=ref.labels.labels[0], i=ref.labels.labels[1],
             u=np.concatenate(ref.labels.shared), mem=ref.memories.unified.centroids.numpy())
    if world > 1:
        dist.destroy_process_group()


def test_pseudo_labels_equal_with_one_and_two_workers(tmp_path, tiny_root, cache_dir):
    _refresh_worker(0, 1, 0, str(cache_dir), str(tmp_path))
    mp.spawn(_refresh_worker, args=(2, _free_port(), str(cache_dir), str(tmp_path)), nprocs=2, join=True)
    one = np.load(tmp_path / "rank0_world1.npz")
    for rank in (0, 1):
        two = np.load(tmp_path / f"rank{rank}_world2.npz")
        for key in ("v", "i", "u"):
            assert np.array_equal(one[key], two[key]), (rank, key)
        assert np.allclose(one["mem"], two["mem"], atol=1e-5)
    assert one["v"].max() >= 1  # real clusters, not a trivial agreement on all-outliers


@pytest.mark.slow
def test_a_killed_and_restarted_two_worker_run_ends_like_an_uninterrupted_one(tmp_path, tiny_root):
    """Rank 1 SIGKILLs itself mid-epoch 2; the group restarts from the epoch-1 checkpoint and the run ends
    with the same test table as the same run uninterrupted (ranks hold identical state at every refresh)."""
    import json

    import ray

    from dmdl_dist.distributed.launcher import launch

    marker = tmp_path / "killed"
    env = {"DMDL_CACHE": os.environ["DMDL_CACHE"], "DMDL_FAULT": f"epoch2:1:{marker}"}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        cfg = load_config("tiny", overrides=["dist.workers=2", "dist.cpus_per_worker=0.5", "dist.max_failures=3",
                                             "run.report=false"])
        killed = launch(cfg, tmp_path / "killed_run")
        assert marker.exists()  # rank 1 really was killed, mid-epoch 2; the fault fires once
        whole = launch(cfg, tmp_path / "whole_run")
    finally:
        ray.shutdown()
    for result in (killed, whole):
        assert result.error is None, repr(result.error)
        assert result.metrics["epoch"] == 2 and result.metrics["workers"] == 2
        assert result.checkpoint is not None
    # Epoch 2 is redone after the kill, epoch 1 is not: it comes from Ray's checkpoint or, when the kill
    # beats Ray's registration of that checkpoint, from the run folder's copy.
    for run in ("killed_run", "whole_run"):
        epochs = [json.loads(line)["epoch"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], run
    tables = [json.loads((tmp_path / run / "results.json").read_text())["test"] for run in ("killed_run", "whole_run")]
    assert 0 <= tables[1]["synthvi-all"]["mean"]["mAP"] <= 100
    for protocol, res in tables[1].items():
        for metric, value in res["mean"].items():
            assert tables[0][protocol]["mean"][metric] == pytest.approx(value, abs=1e-3), (protocol, metric)


@pytest.mark.slow
def test_two_ray_workers_deepspeed_bf16_sharded_memory_train_resume_and_evaluate(tmp_path, tiny_root):
    import json

    import ray

    from dmdl_dist.distributed.launcher import launch
    from dmdl_dist.memory.io import load_memory_shards

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DMDL_CACHE": os.environ["DMDL_CACHE"]}})
    try:
        base = ["dist.workers=2", "dist.cpus_per_worker=0.5", "dist.backend=deepspeed", "dist.zero_stage=2",
                "dist.precision=bf16", "memory.sharded=true"]
        first = launch(load_config("tiny", overrides=base), tmp_path / "run")
        assert first.error is None, repr(first.error)
        with first.checkpoint.as_directory() as folder:
            ranks = sorted(p.name for p in (Path(folder) / "ranks" / "epoch").iterdir())
            # each rank stored its memory shards; they reload onto 1 or 3 workers
            shards = Path(folder) / "ranks"
            assert sorted(p.name for p in shards.glob("memory_rank*.pt")) == ["memory_rank0.pt", "memory_rank1.pt"]
            whole = load_memory_shards(shards, 0, 1)
            three = [load_memory_shards(shards, r, 3) for r in range(3)]
        # ZeRO-2 partitions the optimizer: each rank wrote its own part into the one checkpoint
        assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= set(ranks)
        assert set(whole) == {"visible", "infrared", "unified"}
        for name, mem in whole.items():
            assert mem.num_clusters == mem.shard.shape[0] > 0
            assert torch.allclose(torch.cat([t[name].shard for t in three]), mem.shard)
        # the same run name resumes from its checkpoint: one more stage-2 epoch, optimizer state reloaded
        more = launch(load_config("tiny", overrides=[*base, "train.stage2_epochs=2"]), tmp_path / "run")
    finally:
        ray.shutdown()
    assert more.error is None, repr(more.error)
    assert more.metrics["epoch"] == 3 and more.metrics["workers"] == 2
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0 <= results["test"]["synthvi-all"]["mean"]["mAP"] <= 100


def test_progress_line_names_losses_clusters_and_speed():
    from dmdl_dist.distributed.progress import progress_line

    line = progress_line({"epoch": 2, "stage": 2, "losses.memory": 1.5, "losses.cai": 0.25, "clusters.0": 12,
                          "clusters.1": 9, "association_rate": 0.5, "time.refresh": 3.0, "time.train": 4.0,
                          "images_per_s": 123.4, "workers": 2, "val_rank1": 10.0, "val_mAP": 7.5}, 4)
    for part in ("epoch   2/4", "memory 1.500", "cai 0.250", "clusters V 12 I 9", "assoc 50%", "refresh 3.0s",
                 "123 img/s x 2 workers", "mAP 7.5"):
        assert part in line, part


def _payload(epoch: int) -> dict:
    return {"state": {"epoch": epoch, "history": [{"epoch": e + 1} for e in range(epoch)]}, "model": {}}


def test_ray_session_resumes_from_the_newer_of_ray_and_the_run_folder(tmp_path, monkeypatch):
    """A kill can beat Ray's registration of a checkpoint, and `dmdl train --resume` is a new launch: resume
    takes the newest intact checkpoint wherever it is (Ray's latest or the run folder's last.pt, whatever
    launch wrote it) and rewrites metrics.jsonl to that checkpoint's epochs, so no epoch is recorded twice."""
    import json

    import ray.train

    from dmdl_dist.distributed.session import RANK_FILES, RaySession
    from dmdl_dist.engine import checkpoint as ckpt

    run, ray_dir = tmp_path / "run", tmp_path / "ray"
    ray_dir.mkdir()
    ckpt.save_atomic(_payload(1), ray_dir / ckpt.LAST)  # Ray registered epoch 1 only
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(ray_dir))
    ckpt.save_atomic({**_payload(2), "launch_id": "an earlier launch"}, run / ckpt.LAST)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 2)))

    payload, files = RaySession(run).load("cpu")
    assert payload["state"]["epoch"] == 2 and files is None  # the run folder's copy has no per-rank files
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    ckpt.save_atomic(_payload(3), ray_dir / ckpt.LAST)  # now Ray's is the newer one
    payload, files = RaySession(run).load("cpu")
    assert payload["state"]["epoch"] == 3 and files.name == RANK_FILES
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert RaySession(run).load("cpu")[0]["state"]["epoch"] == 2  # no Ray checkpoint at all: the run folder's
    assert RaySession(tmp_path / "new").load("cpu") == (None, None)


def test_local_resume_rewrites_metrics_to_the_checkpoint(tmp_path):
    """A kill between the checkpoint and its metrics line, or after a line whose checkpoint was lost:
    the resumed run's metrics.jsonl holds exactly the epochs of the checkpoint it continues."""
    import json

    from dmdl_dist.distributed.session import LocalSession
    from dmdl_dist.engine import checkpoint as ckpt

    ckpt.save_atomic(_payload(2), tmp_path / ckpt.LAST)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")  # epoch 2's line never written
    assert LocalSession(tmp_path, resume=True).load("cpu")[0]["state"]["epoch"] == 2
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
