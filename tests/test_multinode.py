"""Several nodes: a simulated two-node Ray cluster trains the tiny preset with one worker on each node,
and a second launch with the same name resumes from the checkpoint in the shared storage."""

import json
import os

import pytest

from dmdl_dist.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def _worker_nodes() -> set[str]:
    """Node ids where the cluster's Ray Train workers ran (dead actors included), from the GCS actor table."""
    import ray

    table = ray._private.state.actors()  # private, as Ray's own tests use it
    return {a["Address"]["NodeID"] for a in table.values() if a["ActorClassName"] == "RayTrainWorker"}


def test_two_nodes_train_and_a_second_launch_resumes_from_storage(tmp_path, tiny_root):
    import ray
    from ray.cluster_utils import Cluster

    from dmdl_dist.distributed.launcher import make_trainer

    # One CPU per node and one per worker: the two workers can only run on different nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        second = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"DMDL_CACHE": os.environ["DMDL_CACHE"]}})
        base = ["dist.workers=2", "dist.cpus_per_worker=1", f"dist.storage_path={tmp_path / 'storage'}"]
        run = tmp_path / "run"
        first = make_trainer(load_config("tiny", overrides=base), run, name="two-nodes").fit()
        assert first.error is None, repr(first.error)
        nodes = _worker_nodes()
        assert nodes == {cluster.head_node.node_id, second.node_id}
        # The same name and storage: Ray hands the latest checkpoint to the new workers.
        cfg = load_config("tiny", overrides=[*base, "train.stage2_epochs=2"])
        more = make_trainer(cfg, run, name="two-nodes").fit()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert more.error is None, repr(more.error)
    assert first.metrics["epoch"] == 2 and first.metrics["workers"] == 2
    assert more.metrics["epoch"] == 3 and more.metrics["workers"] == 2
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # epoch 3 only: the second launch did not start over
    assert (tmp_path / "storage" / "two-nodes").is_dir()  # checkpoints went to the storage path, not the run folder
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["test"]["synthvi-all"]["mean"]["mAP"] <= 100
