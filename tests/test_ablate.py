"""`dmdl ablate`: a table per variant and seed, its report, and no retraining of finished variants."""

import pyarrow.parquet as pq
import pytest

from dmdl_dist.commands.train import ablate as run_ablation
from dmdl_dist.config import load_config
from dmdl_dist.engine import ablate


@pytest.mark.slow
def test_ablation_writes_its_tables_and_report_and_resumes(tmp_path, tiny_root, monkeypatch):
    base = load_config("tiny", overrides=["run.report=false", "train.iters_per_epoch=2"])
    names = ["floor (untrained)", "full DMDL"]
    table = run_ablation(base, tmp_path, seeds=1, variants=names, echo=lambda *a, **k: None)
    assert sorted(set(table.column("variant").to_pylist())) == sorted(names)
    assert pq.read_table(tmp_path / "ablation.parquet").num_rows == table.num_rows
    md = (tmp_path / "ablation.md").read_text()
    report = (tmp_path / "report.md").read_text()
    for name in names:
        assert name in md and name in report
    assert "## Environment" in report

    def no_training(*args, **kwargs):
        raise AssertionError("a finished variant was trained again")

    monkeypatch.setattr(ablate, "train", no_training)
    again = run_ablation(base, tmp_path, seeds=1, variants=names, echo=lambda *a, **k: None)
    assert again.to_pylist() == table.to_pylist()
    with pytest.raises(ValueError, match="unknown ablation variant"):
        run_ablation(base, tmp_path, variants=["nope"])
    other = load_config("tiny", overrides=["run.report=false", "train.iters_per_epoch=2", "train.lr=5e-4"])
    with pytest.raises(ValueError, match=r"full-dmdl-seed0 was trained with another config \(train.lr: "):
        run_ablation(other, tmp_path, seeds=1, variants=["full DMDL"], echo=lambda *a, **k: None)  # never read back
