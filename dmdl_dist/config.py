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

from dmdl_dist.errors import DmdlError

PRESETS = ("tiny", "synthvi", "sysu", "regdb", "llcm")
DEFAULT_PRESET = "synthvi"


class ConfigError(DmdlError, ValueError):
    """A config file or override names an unknown key, holds a value of the wrong type or an impossible setting."""


BOTH = "both"  # a key's stage: it changes what stage 1 and stage 2 train
RUN = None  # a key's stage: it changes how a run is executed, reported or placed, not what it trains


def option(default: Any, doc: str, *, stage: int | str | None = BOTH, choices: tuple | None = None) -> Any:
    """A schema field with its meaning, the stage it acts in (1, 2, BOTH or RUN) and its allowed values.

    `dmdl config --keys` prints the docs; `dmdl tune` reads the stages (a space of stage-2 keys
    shares one stage 1); `validate` checks the choices.
    """
    meta = {"doc": doc, "stage": stage, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = option("synthvi", "data set to train on", choices=("synthvi", "sysu", "regdb", "llcm"))
    root: str | None = option(None, "data set root folder; for synthvi, null means the generated copy in the cache",
                              stage=RUN)  # where the data lies, not what it is: a moved data set resumes
    synthvi_size: str = option("default", "which SynthVI is generated when root is null", choices=("default", "tiny"))
    synthvi_bias: float | None = option(
        None, "SynthVI's modality bias: the share of infrared heat drawn apart from the visible colour (0: heat is "
        "the colour's luminance, 1: independent); null: the generator's default, 0.8")
    trial: int = option(1, "RegDB split used for training (1..10)")
    holdout_val: bool = option(True, "keep exp/val_id.txt's ids out of training to select the model (SYSU-MM01, "
                               "SynthVI); false trains on train + val and keeps the last epoch")
    height: int = option(128, "input height in pixels")
    width: int = option(64, "input width in pixels")
    pad: int = option(10, "zero padding before the training crop, in pixels (the release's 10 at 288 x 144 shifts "
                      "a person by up to 7 % of the width; scale it with the input size)")
    num_pids: int = option(8, "P: pseudo-identities per modality in the global batch (split across workers)")
    num_instances: int = option(8, "K: images per pseudo-identity in the global batch")
    camera_aware: bool = option(True, "each identity's K images: one anchor plus K-1 from its other cameras")
    loader_workers: int = option(2, "data loader processes (under Ray: at most dist.cpus_per_worker - 1)", stage=RUN)
    skip_bad_images: bool = option(False, "leave unreadable images out (listed in RUN_DIR/bad_images.txt) instead "
                                   "of stopping")
    cache_mb: int = option(1024, "keep the training images decoded and resized in memory (in every worker) when "
                           "they take at most this many MiB; 0: read every file each time. Results are the same",
                           stage=RUN)


@dataclass
class ModelConfig:
    arch: str = option("small", "backbone: resnet50 (the paper's) or a small CPU network",
                       choices=("small", "resnet50"))
    pretrained: str | None = option(None, "trunk weights: null, imagenet (torchvision's cache) or a .pth file")
    last_stride: int = option(1, "stride of the last stage (1: twice the feature map)")
    non_local: bool = option(False, "non-local blocks in stages 2 and 3 (AGW's placement)")
    gem_p: float = option(3.0, "GeM pooling exponent")
    sync_bn: bool = option(True, "BatchNorm statistics over the global batch when several workers train "
                           "(SyncBatchNorm); false: each worker's own share")


@dataclass
class ClusterConfig:
    k1: int = option(30, "k-reciprocal neighbours of the Jaccard distance (stage 2: the anchor modality's)")
    k1_source: int = option(15, "stage 2: k1 of the source modality (the one mapped onto the anchor)", stage=2)
    k2: int = option(6, "query-expansion neighbours of the Jaccard distance")
    eps: float = option(0.6, "DBSCAN radius on the Jaccard distance, in (0, 1)")
    min_samples: int = option(4, "DBSCAN core-point neighbourhood size")
    association: str = option("nearest", "stage 2 cross-modality matching of clusters: nearest (DMDL, alternating "
                              "anchor) or hungarian (one-to-one)", stage=2, choices=("nearest", "hungarian"))
    sample_matching: str = option("never", "stage 2: regdb = each source image takes the label of its nearest anchor "
                                  "image on stage-2 epochs with epoch mod 5 >= 2 (the release's RegDB)", stage=2,
                                  choices=("never", "regdb"))
    knn_backend: str = option("auto", "exact k-NN of the clustering: faiss, torch (matmul + top-k on the worker's "
                              "device) or auto (faiss when installed)", stage=RUN, choices=("auto", "faiss", "torch"))
    max_degenerate_epochs: int = option(2, "stop with advice after this many epochs in a row where one cluster holds "
                                        "more than half of a modality or every sample is an outlier", stage=RUN)


@dataclass
class MemoryConfig:
    momentum: float = option(0.2, "cluster memory momentum: row <- normalise(m * row + (1 - m) * f), per sample")
    temperature: float = option(0.05, "softmax temperature of the memory logits")
    sharded: bool = option(False, "split memory rows across workers by cluster-id range (PartialFC); no effect "
                           "locally", stage=RUN)


@dataclass
class CAIConfig:
    """Causality-inspired Adjustment Intervention (stage 2)."""

    enabled: bool = option(True, "backdoor-adjusted loss over the modality confounder", stage=2)
    weight: float = option(0.5, "mu: weight of the CAI loss", stage=2)
    temperature: float = option(0.05, "temperature of the per-modality softmaxes of P(Y | do(X))", stage=2)
    prior: str = option("empirical", "P(m): empirical (share of labelled instances) or uniform", stage=2,
                        choices=("empirical", "uniform"))
    adaptive_momentum: bool = option(True, "unified memory momentum 0.2 / max(target at the label, 0.2), per sample; "
                                     "false: the plain momentum", stage=2)


@dataclass
class CBTConfig:
    """Collaborative Bias-free Training (both stages)."""

    augment: bool = option(True, "two modality-specific views per image (else one plain view)")
    erase_p: float = option(0.5, "random erasing probability, every view")
    erase_max_area: float = option(0.5, "largest erased share of the image, stage 1", stage=1)
    erase_max_area_stage2: float = option(0.5, "largest erased share of the image, stage 2 (RegDB: 0.6)", stage=2)
    gray_p: float = option(0.5, "infrared view 1, when no channel is copied (1/4 of images): chance of the gray mix")
    refine: bool = option(True, "soft targets: (1 - lam) * the other view's top-k memory prediction + lam * one-hot")
    topk_stage1: int = option(3, "top-k of the refined target in stage 1", stage=1)
    topk_stage2: int = option(10, "top-k of the refined target in stage 2 (over the unified memory)", stage=2)
    confidence: str = option("gmm", "lam: gmm (2-component mixture per cluster on -p(label)) or none (lam = 1)",
                             choices=("gmm", "none"))
    confidence_scope: str = option("cluster", "one mixture per cluster (the release) or one over all samples",
                                   choices=("cluster", "global"))
    confidence_from_stage1: float = option(0.6, "share of stage 1 with lam = 1 before the mixture is used (release: "
                                           "epoch 30 of 50; 1 = never, RegDB)", stage=1)
    confidence_from_stage2: float = option(0.1, "share of stage 2 trained on one-hot targets first (release: 5 of 50)",
                                           stage=2)
    mmd: bool = option(True, "MMD between the two views' features of each modality")
    mmd_weight: float = option(1.0, "weight of the MMD loss")
    mmd_kernels: int = option(5, "Gaussian kernels of the MMD")
    mmd_mul: float = option(2.0, "bandwidth ratio between neighbouring MMD kernels")


@dataclass
class TrainConfig:
    stage1_epochs: int = option(8, "epochs of stage 1 (intra-modality)", stage=1)
    stage2_epochs: int = option(8, "epochs of stage 2 (cross-modality)", stage=2)
    iters_per_epoch: int = option(30, "optimizer steps per epoch (global batches)")
    lr: float = option(3.5e-4, "Adam learning rate, restarted at each stage")
    weight_decay: float = option(5e-4, "Adam (L2) weight decay")
    lr_step: int = option(20, "epochs per x lr_gamma decay, counted within each stage")
    lr_gamma: float = option(0.1, "learning-rate decay factor")
    lr_scale: str = option("none", "with dist.batch=per_worker: lr x workers (linear), x sqrt(workers) (sqrt) or as "
                           "is (none)", choices=("none", "linear", "sqrt"))
    triplet: bool = option(True, "batch-hard triplet loss on the raw BN-neck feature, on its schedule")
    triplet_margin: float = option(0.3, "triplet margin")
    triplet_from_stage1: list[float] = option([0.32, 0.52, 0.72], "shares of stage 1 where the triplet weight steps "
                                              "up (release: epochs 16, 26, 36 of 50)", stage=1)
    triplet_weights_stage1: list[float] = option([0.25, 0.5, 1.0], "the triplet weight from each step on", stage=1)
    triplet_from_stage2: list[float] = option([0.22, 0.42], "shares of stage 2 where the triplet weight steps up "
                                              "(release: epochs 11, 21 of 50)", stage=2)
    triplet_weights_stage2: list[float] = option([0.5, 1.0], "the triplet weight from each step on", stage=2)
    joint_from_stage2: float = option(0.8, "share of stage 2 after which batches draw the same shared labels in both "
                                      "modalities and a cross-modality triplet is added (release: 40 of 50)", stage=2)
    seed: int = option(0, "seed of everything random in the run")
    device: str = option("auto", "auto, cpu or cuda (local mode; Ray places its workers itself)", stage=RUN,
                         choices=("auto", "cpu", "cuda"))
    eval_batch_size: int = option(256, "batch size of feature extraction", stage=RUN)
    supervised: bool = option(False, "ceiling: the true identities instead of pseudo-labels")
    init_from: str | None = option(None, "a checkpoint to start from (its weights, epoch and history), e.g. a stage-1 "
                                   "run shared by a sweep's stage-2 trials; its config must match on the keys of "
                                   "the epochs it trained", stage=RUN)


@dataclass
class EvalConfig:
    trials: int = option(10, "gallery draws of the test protocols (SYSU-MM01, LLCM, SynthVI)", stage=RUN)
    mode: str = option("all", "SYSU-MM01 / SynthVI search mode of the final test", stage=RUN, choices=("all", "indoor"))


@dataclass
class DistConfig:
    workers: int = option(0, "Ray Train workers; 0 is local mode (one process, no Ray)", stage=RUN)
    gpus_per_worker: float = option(0.0, "GPUs per Ray worker", stage=RUN)
    cpus_per_worker: float = option(1.0, "CPUs per Ray worker", stage=RUN)
    backend: str = option("ddp", "ddp or deepspeed (ZeRO 1/2)", stage=RUN, choices=("ddp", "deepspeed"))
    zero_stage: int = option(2, "DeepSpeed ZeRO stage (1 or 2)", stage=RUN)
    precision: str = option("fp32", "fp32, bf16 (autocast), fp16 (loss scaling, CUDA) or auto (bf16 where the GPU "
                            "has it, else fp16; fp32 on CPU)", stage=RUN, choices=("fp32", "bf16", "fp16", "auto"))
    batch: str = option("global", "global: the recipe's batch is split across workers (the same recipe on any "
                        "count); per_worker: every worker draws a whole batch (N times the batch; another recipe)",
                        choices=("global", "per_worker"))
    storage_path: str | None = option(None, "Ray Train storage for checkpoints (s3://, gs://, a shared folder); "
                                      "null: the run folder's parent", stage=RUN)
    max_failures: int = option(3, "worker-group restarts from the last checkpoint before a Ray run fails", stage=RUN)
    address: str | None = option(None, "Ray cluster to join (auto or HOST:PORT; RAY_ADDRESS too); null starts a "
                                 "private local one", stage=RUN)
    bind: str = option("127.0.0.1", "address the Ray servers of a local cluster we start listen on", stage=RUN)


@dataclass
class RunConfig:
    out_dir: str = option("runs", "folder of run folders", stage=RUN)
    name: str | None = option(None, "run name; null: the preset and the time", stage=RUN)
    report: bool = option(True, "report.md, curves, ranked lists, modality-gap picture, TensorBoard events",
                          stage=RUN)


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


@dataclass(frozen=True)
class KeyInfo:
    key: str  # dotted, e.g. "train.lr"
    type: str
    default: Any
    doc: str
    stage: int | str | None
    choices: tuple | None


def schema_keys() -> list[KeyInfo]:
    """Every key of the schema with its type, default, meaning, stage and choices, in schema order."""
    out = []
    for section in dataclasses.fields(Config):
        if section.name == "preset":
            continue
        hints = typing.get_type_hints(section.default_factory)
        for f in dataclasses.fields(section.default_factory):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out.append(KeyInfo(f"{section.name}.{f.name}", _type_name(hints[f.name]), default, f.metadata["doc"],
                               f.metadata["stage"], f.metadata["choices"]))
    return out


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def key_stage(key: str) -> int | str | None:
    """The stage a dotted key acts in: 1, 2, BOTH or RUN (see `option`)."""
    for info in schema_keys():
        if info.key == key:
            return info.stage
    raise ConfigError(f"unknown config key '{key}'")


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
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list of {item.__name__}, got {value!r}")
        return [_coerce(v, item, key) for v in value]
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


def _read_yaml(path: Path) -> Any:
    """A YAML file's content; a syntax error is a ConfigError naming the file, the line and the column."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
        raise ConfigError(f"config file {path}{where} is not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read as text ({err})") from None


def _load_yaml(path: Path, seen: tuple[Path, ...] = (), referrer: Path | None = None) -> dict:
    """Reads a YAML config, resolving `_base_` (a path relative to the file, or a preset name).

    Files are compared by their resolved path, so a cycle through `..` or a symbolic link is found too.
    """
    path = Path(path)
    key = path.resolve()
    if key in seen:
        raise ConfigError(f"config files include each other in a cycle: {' -> '.join(map(str, seen + (key,)))}")
    if not path.is_file():
        by = f" (the _base_ of {referrer})" if referrer is not None else ""
        raise ConfigError(f"config file {path} does not exist{by}")
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: _base_ must be a file name or a preset ({', '.join(PRESETS)}), "
                          f"got {base!r}")
    base_path = preset_path(base) if base in PRESETS else (path.parent / base)
    return _deep_update(_load_yaml(base_path, seen + (key,), referrer=path), data)


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


def validate(cfg: Config) -> None:
    """Cross-field and choice checks that the type annotations cannot express.

    Everything that would otherwise fail after training started, or train on nonsense without a
    word, is refused here with the key, the value and what would work.
    """
    flat = to_dict(cfg)
    for info in schema_keys():
        section, name = info.key.split(".")
        if info.choices and flat[section][name] not in info.choices:
            raise ConfigError(f"config key '{info.key}' must be one of {info.choices}, got {flat[section][name]!r}")
    if cfg.data.dataset != "synthvi" and cfg.data.root is None:
        raise ConfigError(f"data.dataset={cfg.data.dataset} needs data.root=/path/to/{cfg.data.dataset}")
    at_least = {
        "train.iters_per_epoch": (cfg.train.iters_per_epoch, 1), "train.stage1_epochs": (cfg.train.stage1_epochs, 0),
        "train.stage2_epochs": (cfg.train.stage2_epochs, 0), "train.lr_step": (cfg.train.lr_step, 1),
        "cluster.k1": (cfg.cluster.k1, 1), "cluster.k1_source": (cfg.cluster.k1_source, 1),
        "cluster.k2": (cfg.cluster.k2, 1), "cluster.min_samples": (cfg.cluster.min_samples, 1),
        "cluster.max_degenerate_epochs": (cfg.cluster.max_degenerate_epochs, 1),
        "data.num_pids": (cfg.data.num_pids, 2), "data.num_instances": (cfg.data.num_instances, 2),
        "data.height": (cfg.data.height, 16), "data.width": (cfg.data.width, 16), "data.pad": (cfg.data.pad, 0),
        "data.loader_workers": (cfg.data.loader_workers, 0),
        "data.cache_mb": (cfg.data.cache_mb, 0), "cbt.topk_stage1": (cfg.cbt.topk_stage1, 1),
        "cbt.topk_stage2": (cfg.cbt.topk_stage2, 1), "cbt.mmd_kernels": (cfg.cbt.mmd_kernels, 1),
        "eval.trials": (cfg.eval.trials, 1), "train.eval_batch_size": (cfg.train.eval_batch_size, 1),
        "dist.workers": (cfg.dist.workers, 0),
    }
    for key, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"config key '{key}' must be at least {low}, got {value}")
    positive = {"train.lr": cfg.train.lr, "memory.temperature": cfg.memory.temperature,
                "cai.temperature": cfg.cai.temperature, "cbt.mmd_mul": cfg.cbt.mmd_mul,
                "train.triplet_margin": cfg.train.triplet_margin, "model.gem_p": cfg.model.gem_p}
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    unit = {"memory.momentum": cfg.memory.momentum, "cbt.erase_p": cfg.cbt.erase_p, "cbt.gray_p": cfg.cbt.gray_p,
            "cbt.erase_max_area": cfg.cbt.erase_max_area, "cbt.erase_max_area_stage2": cfg.cbt.erase_max_area_stage2,
            "train.lr_gamma": cfg.train.lr_gamma}
    for key, value in unit.items():
        if not 0 <= value <= 1:
            raise ConfigError(f"config key '{key}' must lie in [0, 1], got {value}")
    for key in ("train.weight_decay", "cai.weight", "cbt.mmd_weight", "cbt.confidence_from_stage1",
                "cbt.confidence_from_stage2", "train.joint_from_stage2"):
        section, name = key.split(".")
        if flat[section][name] < 0:
            raise ConfigError(f"config key '{key}' must not be negative, got {flat[section][name]}")
    for stage in ("stage1", "stage2"):
        starts, weights = flat["train"][f"triplet_from_{stage}"], flat["train"][f"triplet_weights_{stage}"]
        if len(starts) != len(weights) or starts != sorted(starts):
            raise ConfigError(f"train.triplet_from_{stage} ({starts}) must be ascending and as long as "
                              f"train.triplet_weights_{stage} ({weights})")
    if cfg.data.synthvi_bias is not None and not 0 <= cfg.data.synthvi_bias <= 1:
        raise ConfigError(f"config key 'data.synthvi_bias' must lie in [0, 1] (or be null for the generator's 0.8), "
                          f"got {cfg.data.synthvi_bias}")
    if not 0 < cfg.cluster.eps < 1:
        raise ConfigError(f"cluster.eps must be in (0, 1) (Jaccard distances lie in [0, 1]), got {cfg.cluster.eps}")
    if cfg.dist.zero_stage not in (1, 2):
        raise ConfigError(f"dist.zero_stage must be 1 or 2 (ZeRO-3 would shard the module itself), got "
                          f"{cfg.dist.zero_stage}")
    if cfg.dist.backend == "deepspeed" and cfg.dist.workers == 0:
        raise ConfigError("dist.backend=deepspeed runs under Ray Train: add --workers N (N >= 1), or use "
                          "dist.backend=ddp for local mode")
    check_batch_split(cfg)


def check_batch_split(cfg: Config) -> None:
    """With dist.batch=global, every worker takes an equal share of each modality's P x K batch."""
    batch, workers = cfg.data.num_pids * cfg.data.num_instances, max(cfg.dist.workers, 1)
    if cfg.dist.batch == "global" and batch % workers:
        fits = [n for n in range(1, batch + 1) if batch % n == 0]
        raise ConfigError(
            f"{workers} workers cannot split the global batch of {cfg.data.num_pids} x {cfg.data.num_instances} = "
            f"{batch} images per modality equally; worker counts that can: {fits} (or change data.num_pids / "
            "data.num_instances, or take dist.batch=per_worker, a different recipe)")


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
    from dmdl_dist.engine.atomic import write_text  # atomic, fsynced; config stays importable on its own

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_run_config(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    *,
    checkpoint_config: dict | None = None,
    force: bool = False,
) -> Config:
    """The config saved beside a run, for --resume, with `overrides` applied.

    With `checkpoint_config` (the config stored in the run's checkpoint), a difference on a key that
    changes training (any stage but RUN: not e.g. train.device) is refused unless `force`: a hand-edited
    config.yaml or a --set would otherwise continue the run as another one without a word.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a dmdl_dist run folder: {path} is missing")
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    try:
        cfg = from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if overrides:
        apply_overrides(cfg, dict(parse_override(o) for o in overrides))
        validate(cfg)
    if checkpoint_config is not None:
        differ = differing_keys(checkpoint_config, to_dict(cfg))
        if differ and not force:
            changes = describe_differences(differ)
            raise ConfigError(
                f"{run_dir}: this resume would train on with other values than its checkpoint was trained with "
                f"({changes}). Resume as trained (drop those --set, restore config.yaml), or add --force-config to "
                "continue with the new values")
    return cfg


def describe_differences(differ: list[tuple[str, Any, Any]]) -> str:
    """`differing_keys`' result as one line: "key: old -> new; ..."."""
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in differ)


def differing_keys(old: dict, new: dict, *, stages: tuple = (1, 2, BOTH)) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every schema key of `stages` on which two config dicts differ.

    A key absent from `old` (a config of another version) counts as different, with the value None.
    """
    out = []
    for info in schema_keys():
        if info.stage not in stages:
            continue
        section, name = info.key.split(".")
        before = old.get(section, {}).get(name) if isinstance(old.get(section), dict) else None
        after = new[section][name]
        if before != after:
            out.append((info.key, before, after))
    return out
