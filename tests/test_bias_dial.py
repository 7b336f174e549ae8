"""bench/bias_dial.py: the baseline and DMDL per SynthVI bias, the gain table and its figure."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmdl_dist.engine import ablate

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bias_dial.py"


@pytest.fixture(scope="module")
def bias_dial():
    spec = importlib.util.spec_from_file_location("bias_dial", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_bias_trains_both_variants_and_the_gain_is_tabled_and_drawn(bias_dial, tmp_path, monkeypatch, capsys):
    trained = []

    def fake_train(cfg, run_dir, resume, echo):  # mAP 10 x bias, +3 for CBT, +1 per seed; R1 half of it
        trained.append((cfg.data.synthvi_bias, cfg.cbt.mmd, cfg.train.seed, run_dir.parent.name))
        m = 10 * (0.8 if cfg.data.synthvi_bias is None else cfg.data.synthvi_bias) + 3 * cfg.cbt.mmd + cfg.train.seed
        results = {"test": {"synthvi-all": {"mean": {"rank1": m / 2, "mAP": m, "mINP": 1.0}}}}
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(results))  # as train() leaves it
        return results

    monkeypatch.setattr(ablate, "train", fake_train)
    argv = ["--bias", "0.4", "0.8", "--seeds", "2", "--out", str(tmp_path), "--set", "run.report=false"]
    assert bias_dial.main(argv) == 0
    # The default bias reads the default cache (no override); every other bias sets data.synthvi_bias.
    assert sorted(trained, key=str) == sorted(((b, mmd, s, f"bias{b or 0.8:g}") for b in (0.4, None)
                                               for mmd in (False, True) for s in (0, 1)), key=str)
    out = capsys.readouterr().out
    assert "| 0.4 | 2 | 2.2 ± 0.2 | 3.8 ± 0.2 | +1.5 | 4.5 ± 0.5 | 7.5 ± 0.5 | +3.0 |" in out
    assert "| 0.8 | 2 | 4.2 ± 0.2 | 5.8 ± 0.2 | +1.5 | 8.5 ± 0.5 | 11.5 ± 0.5 | +3.0 |" in out
    assert Image.open(tmp_path / "bias_dial.png").size == (560, 360)
    # Resumable: a second call reads the finished runs back and only redraws.
    monkeypatch.setattr(ablate, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    (tmp_path / "bias_dial.png").unlink()
    assert bias_dial.main(argv) == 0 and (tmp_path / "bias_dial.png").is_file()


def test_bad_arguments_are_refused(bias_dial, capsys):
    with pytest.raises(SystemExit) as stop:
        bias_dial.main(["--bias", "1.5"])
    assert stop.value.code == 2 and "--bias must lie in [0, 1]" in capsys.readouterr().err


def test_gain_table_reads_mean_and_std_over_seeds(bias_dial):
    results = {1.0: {"baseline": np.array([[1.0, 4.0], [3.0, 6.0]]), "full DMDL": np.array([[5.0, 9.0], [5.0, 11.0]])}}
    assert bias_dial.table(results).splitlines()[-1] == (
        "| 1 | 2 | 2.0 ± 1.0 | 5.0 ± 0.0 | +3.0 | 5.0 ± 1.0 | 10.0 ± 1.0 | +5.0 |")
