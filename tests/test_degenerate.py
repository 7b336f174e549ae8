"""A clustering that trains nothing useful is said on the epoch line and in the report; if it stays, the run stops."""

import json

import numpy as np
import pytest

from dmdl_dist.config import load_config
from dmdl_dist.engine.recluster import degenerate_clustering
from dmdl_dist.engine.trainer import DegenerateClusteringError, train
from dmdl_dist.report.report import write_report


def test_one_giant_cluster_or_all_outliers_is_degenerate():
    assert degenerate_clustering([np.array([0, 0, 1, 2, -1, 3]), np.array([0, 1, 2, 3])]) == []
    giant = degenerate_clustering([np.array([0, 0, 0, 0, 1, -1]), np.array([-1, -1, -1])])
    assert giant == ["one visible cluster holds 67% of the visible samples", "every infrared sample is an outlier"]


@pytest.mark.slow
def test_a_run_warns_on_each_degenerate_epoch_and_stops_when_it_persists(tmp_path, tiny_root, caplog):
    lines = []
    cfg = load_config("tiny", overrides=["cluster.eps=0.99", "cluster.max_degenerate_epochs=3", "run.report=false"])
    train(cfg, tmp_path / "warned", progress=False, echo=lines.append)
    epochs = [line for line in lines if line.startswith("epoch")]
    assert epochs and all("WARNING degenerate clustering" in line for line in epochs)
    assert "degenerate clustering" in caplog.text and "lower cluster.eps" in caplog.text
    records = [json.loads(x) for x in (tmp_path / "warned" / "metrics.jsonl").read_text().splitlines()]
    assert [r["degenerate_epochs"] for r in records] == [1, 2] and "one visible cluster" in records[0]["degenerate"][0]
    assert "## Warnings" in write_report(tmp_path / "warned", model_pictures=False).read_text()
    stop = load_config("tiny", overrides=["cluster.eps=0.99", "cluster.max_degenerate_epochs=1", "run.report=false"])
    with pytest.raises(DegenerateClusteringError, match="degenerate for 1 epochs in a row.*lower cluster.eps"):
        train(stop, tmp_path / "stopped", progress=False, echo=lines.append)
