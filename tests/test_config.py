import pytest
import torch
import yaml

from dmdl_dist.config import (
    PRESETS,
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    load_run_config,
    save_config,
    to_dict,
)


def test_every_preset_loads():
    for name in PRESETS:
        overrides = [] if name in ("tiny", "synthvi") else ["data.root=/data/x"]
        cfg = load_config(name, overrides=overrides)
        assert cfg.preset == name


def test_real_data_preset_needs_root():
    with pytest.raises(ConfigError, match="data.root"):
        load_config("sysu")


def test_overrides_are_typed_and_win():
    cfg = load_config("tiny", overrides=["train.lr=3e-4", "cai.enabled=false", "cluster.k1=7"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.cai.enabled is False
    assert cfg.cluster.k1 == 7


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("nosection.x=1", "unknown config key 'nosection'"),
        ("train.lr=abc", "'train.lr' expects float"),
        ("cluster.k1=2.5", "'cluster.k1' expects int"),
        ("cai.enabled=3", "'cai.enabled' expects bool"),
        ("model.arch=vgg", "'model.arch' must be one of"),
        ("cluster.eps=1.5", "cluster.eps must be in"),
        ("train", "must look like"),
    ],
)
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=[override])


def test_yaml_base_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"train": {"lr": 1e-3, "seed": 5}}))
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain:\n  seed: 7\ncai:\n  weight: 0.25\n")
    cfg = load_config("tiny", tmp_path / "child.yaml")
    assert cfg.train.lr == pytest.approx(1e-3)  # from the base file
    assert cfg.train.seed == 7  # the child wins
    assert cfg.cai.weight == 0.25
    assert cfg.data.synthvi_size == "tiny"  # the preset under both


def test_yaml_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(config_file=tmp_path / "a.yaml")


def test_unknown_key_in_file(tmp_path):
    (tmp_path / "c.yaml").write_text("memory:\n  momentumm: 0.1\n")
    with pytest.raises(ConfigError, match="memory.momentumm"):
        load_config(config_file=tmp_path / "c.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("tiny", overrides=["train.seed=3", "cbt.mmd_weight=0.5"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_run_config(tmp_path)
    assert to_dict(again) == to_dict(cfg)
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_apply_overrides_is_the_tune_entry_point():
    cfg = load_config("tiny")
    apply_overrides(cfg, {"cai.weight": 0.1, "cluster.eps": 0.5})
    assert (cfg.cai.weight, cfg.cluster.eps) == (0.1, 0.5)


@pytest.mark.parametrize("overrides, message", [
    (["dist.zero_stage=3"], "zero_stage must be 1 or 2"),
    (["dist.workers=3"], r"3 workers cannot split .* worker counts that can: \[1, 2, 4, 8, 16\]"),
    (["train.iters_per_epoch=0"], "'train.iters_per_epoch' must be at least 1"),
    (["train.stage1_epochs=-1"], "'train.stage1_epochs' must be at least 0"),
    (["train.lr=0"], "'train.lr' must be positive"),
    (["train.lr=-1e-3"], "'train.lr' must be positive"),
    (["cluster.k1=0"], "'cluster.k1' must be at least 1"),
    (["data.pad=-1"], "'data.pad' must be at least 0"),
    (["dist.backend=deepspeed"], "add --workers"),
])
def test_distributed_choices_that_cannot_work_are_refused_early(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=overrides)


def test_deepspeed_engine_refuses_fp16_on_cpu():
    from dmdl_dist.distributed.backend import build_engine
    from dmdl_dist.models.backbone import build_model

    cfg = load_config("tiny", overrides=["dist.backend=deepspeed", "dist.workers=2", "dist.precision=fp16"])
    with pytest.raises(ConfigError, match="CUDA"):
        build_engine(build_model("small"), torch.device("cpu"), cfg)
