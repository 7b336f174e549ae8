"""Typed run configuration: dataclass schema, YAML files with `_base_` inheritance, dotted overrides.

Every knob of a run lives here, so a run is reproduced from its saved `config.yaml` alone. An
unknown key or a value of the wrong type is an error that names the key (nanoGPT's
configurator, made strict).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESETS = ("tiny", "synthvi", "sysu", "regdb", "llcm")
DEFAULT_PRESET = "synthvi"


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


@dataclass
class DataConfig:
    dataset: str = "synthvi"  # synthvi | sysu | regdb | llcm
    root: str | None = None  # dataset root; for synthvi, None means the generated cache folder
    synthvi_size: str = "default"  # default | tiny: which SynthVI is generated when root is None
    trial: int = 1  # RegDB split used for training (1..10)
    holdout_val: bool = True  # keep the val ids out of training, for model selection
    height: int = 128
    width: int = 64
    num_pids: int = 8  # P: pseudo-identities per modality in a batch
    num_instances: int = 8  # K: images per pseudo-identity
    loader_workers: int = 2
    skip_bad_images: bool = False


@dataclass
class ModelConfig:
    arch: str = "small"  # small | resnet50
    pretrained: str | None = None  # None, "imagenet" (torchvision's cache) or a .pth path
    last_stride: int = 1
    non_local: bool = False
    gem_p: float = 3.0


@dataclass
class ClusterConfig:
    k1: int = 30
    k2: int = 6
    eps: float = 0.6
    min_samples: int = 4
    association: str = "nearest"  # nearest (DMDL, alternating direction) | hungarian


@dataclass
class MemoryConfig:
    momentum: float = 0.2
    temperature: float = 0.05
    sharded: bool = False  # split centroids across workers by cluster-id range (PartialFC); no effect locally


@dataclass
class CAIConfig:
    """Causality-inspired Adjustment Intervention (stage 2)."""

    enabled: bool = True
    weight: float = 0.5  # mu
    temperature: float = 0.05
    prior: str = "empirical"  # empirical (share of labelled instances) | uniform
    adaptive_momentum: bool = True  # unified memory momentum m / max(confidence, m)


@dataclass
class CBTConfig:
    """Collaborative Bias-free Training (both stages)."""

    augment: bool = True  # modality-specific two-view augmentation
    erase_p: float = 0.5
    gray_p: float = 0.5
    refine: bool = True  # label refinement from the other view's memory prediction
    topk_stage1: int = 3
    topk_stage2: int = 10
    confidence: str = "gmm"  # gmm | none (lam = 1 on every sample)
    confidence_scope: str = "cluster"  # cluster | global
    warmup_epochs: int = 2  # confidence 1 for the first epochs of each stage
    mmd: bool = True
    mmd_weight: float = 1.0
    mmd_kernels: int = 5
    mmd_mul: float = 2.0


@dataclass
class TrainConfig:
    stage1_epochs: int = 8
    stage2_epochs: int = 8
    iters_per_epoch: int = 30
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    lr_step: int = 20  # epochs per x lr_gamma decay, counted within each stage
    lr_gamma: float = 0.1
    triplet: bool = True
    triplet_margin: float = 0.3
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    eval_batch_size: int = 256
    supervised: bool = False  # ceiling: true identities instead of pseudo-labels


@dataclass
class EvalConfig:
    trials: int = 10
    mode: str = "all"  # SYSU-MM01 / SynthVI: all | indoor


@dataclass
class DistConfig:
    workers: int = 0  # 0: local mode, one process, no Ray
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    backend: str = "ddp"  # ddp | deepspeed
    zero_stage: int = 2
    precision: str = "fp32"  # fp32 | bf16 | fp16
    storage_path: str | None = None
    max_failures: int = 0


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str | None = None  # None: derived from the preset and the time
    report: bool = True  # report.md, curves, ranked lists, modality-gap picture, TensorBoard events


@dataclass
class Config:
    preset: str = DEFAULT_PRESET
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    cai: CAIConfig = field(default_factory=CAIConfig)
    cbt: CBTConfig = field(default_factory=CBTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _looks_numeric(value):
        return float(value)  # YAML 1.1 reads '5e-4' (no dot) as a string
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"config key '{key}' expects {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _merge(obj: Any, updates: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in hints:
            known = ", ".join(f"{prefix}{n}" for n in hints)
            raise ConfigError(f"unknown config key '{key}'; known keys here: {known}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' is a section; give a mapping, got {value!r}")
            _merge(current, value, prefix=f"{key}.")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Reads a YAML config, resolving `_base_` (a path relative to the file, or a preset name)."""
    path = Path(path)
    if path in seen:
        raise ConfigError(f"config files include each other in a cycle: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("_base_", None)
    if base is None:
        return data
    base_path = preset_path(base) if base in PRESETS else (path.parent / base)
    return _deep_update(_load_yaml(base_path, seen + (path,)), data)


def _deep_update(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    # Beside this file, not importlib.resources: a folder named dmdl_dist on sys.path (a checkout in the
    # home folder, where `ray submit` runs train.py) would make the package a namespace package there.
    return Path(__file__).resolve().parent / "presets" / f"{name}.yaml"


def parse_override(item: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); values are read as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    return key.strip(), value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Applies dotted-key overrides ({'train.lr': 3e-4}) in place; the CLI and Tune both use this."""
    for key, value in overrides.items():
        nested: dict = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge(cfg, nested)
    return cfg


def load_config(
    preset: str | None = None, config_file: str | Path | None = None, overrides: list[str] | dict | None = None
) -> Config:
    """Preset, then config file, then overrides; each later layer wins."""
    cfg = Config()
    data: dict = {}
    if config_file is not None:
        data = _load_yaml(Path(config_file))
    preset = preset or data.pop("preset", None) or DEFAULT_PRESET
    data.pop("preset", None)
    _merge(cfg, _load_yaml(preset_path(preset)))
    cfg.preset = preset
    _merge(cfg, data)
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    apply_overrides(cfg, overrides or {})
    validate(cfg)
    return cfg


_CHOICES = {
    "data.dataset": ("synthvi", "sysu", "regdb", "llcm"),
    "data.synthvi_size": ("default", "tiny"),
    "model.arch": ("small", "resnet50"),
    "cluster.association": ("nearest", "hungarian"),
    "cai.prior": ("empirical", "uniform"),
    "cbt.confidence": ("gmm", "none"),
    "cbt.confidence_scope": ("cluster", "global"),
    "train.device": ("auto", "cpu", "cuda"),
    "eval.mode": ("all", "indoor"),
    "dist.backend": ("ddp", "deepspeed"),
    "dist.precision": ("fp32", "bf16", "fp16"),
}


def validate(cfg: Config) -> None:
    """Cross-field and choice checks that the type annotations cannot express."""
    flat = to_dict(cfg)
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        if flat[section][name] not in choices:
            raise ConfigError(f"config key '{key}' must be one of {choices}, got {flat[section][name]!r}")
    if cfg.data.dataset != "synthvi" and cfg.data.root is None:
        raise ConfigError(f"data.dataset={cfg.data.dataset} needs data.root=/path/to/{cfg.data.dataset}")
    if not 0 < cfg.cluster.eps < 1:
        raise ConfigError(f"cluster.eps must be in (0, 1) (Jaccard distances lie in [0, 1]), got {cfg.cluster.eps}")
    if cfg.dist.zero_stage not in (1, 2):
        raise ConfigError(f"dist.zero_stage must be 1 or 2 (ZeRO-3 would shard the module itself), got "
                          f"{cfg.dist.zero_stage}")
    if cfg.dist.precision == "fp16" and cfg.dist.backend != "deepspeed":
        raise ConfigError("dist.precision=fp16 needs loss scaling: use dist.backend=deepspeed, or dist.precision=bf16")
    if cfg.dist.backend == "deepspeed" and cfg.dist.workers == 0:
        raise ConfigError("dist.backend=deepspeed runs under Ray Train: add --workers N (N >= 1), or use "
                          "dist.backend=ddp for local mode")
    if cfg.data.num_pids < 2 or cfg.data.num_instances < 2:
        raise ConfigError("data.num_pids and data.num_instances must both be at least 2")


def total_epochs(cfg: Config) -> int:
    """Epochs of a run, both stages."""
    return cfg.train.stage1_epochs + cfg.train.stage2_epochs


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    cfg = Config()
    _merge(cfg, data)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config saved beside a run, for --resume; overrides may change e.g. the device."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a dmdl_dist run folder: {path} is missing")
    cfg = from_dict(yaml.safe_load(path.read_text()))
    if overrides:
        apply_overrides(cfg, dict(parse_override(o) for o in overrides))
        validate(cfg)
    return cfg
