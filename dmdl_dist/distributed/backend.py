"""The data-parallel engines: DDP (NCCL on GPU, gloo on CPU) or DeepSpeed ZeRO-1/2, behind one interface.

The training loop calls an Engine only: forward, step, learning rate, optimizer reset, state.
The cluster memories stay outside both engines: DDP's broadcast_buffers would overwrite a
buffer from rank 0 at every forward and DeepSpeed casts the module it wraps, so the memories
are plain tensors held by the trainer and updated explicitly (memory/).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from dmdl_dist.config import Config, ConfigError
from dmdl_dist.distributed import comm
from dmdl_dist.distributed.sync_bn import convert_batchnorm

log = logging.getLogger("dmdl_dist")
DEEPSPEED_TAG = "epoch"  # one DeepSpeed tag per checkpoint folder


def _params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def resolve_precision(precision: str, device: torch.device) -> str:
    """dist.precision=auto: bf16 where the GPU has it, fp16 on other GPUs (the release ran fp16), fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class Engine:
    """DDP (or the bare module when the world size is 1) with Adam; bf16 or fp16 through torch.autocast.

    With several workers and model.sync_bn, BatchNorm statistics span the global batch
    (distributed/sync_bn.py). fp16 scales the loss (torch.amp.GradScaler) and needs CUDA.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, cfg: Config):
        self.precision = resolve_precision(cfg.dist.precision, device)
        if self.precision == "fp16" and device.type != "cuda":
            raise ConfigError("dist.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
        if cfg.model.sync_bn and cfg.dist.workers > 0:  # Ray runs: any worker count computes alike
            model = convert_batchnorm(model, device)
        self.model = model  # the bare module: state dicts, evaluation, feature extraction
        self.device = device
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.net, self.optimizer = self._build(model, device, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" and not self._scales_itself else None

    _scales_itself = False  # DeepSpeed's fp16 mode scales the loss on its own

    def _build(self, model, device, cfg):
        """(the module the forward calls, the optimizer)."""
        optimizer = torch.optim.Adam(_params(model), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        if comm.world_size() == 1:
            return model, optimizer
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), optimizer

    def __call__(self, images: torch.Tensor):
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        with ctx:
            return self.net(images)

    def train(self, mode: bool = True) -> Engine:
        self.model.train(mode)
        return self

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def reset_optimizer(self) -> None:
        """Forgets the Adam moments: stage 2 starts its optimizer afresh, as the two-stage recipe does."""
        self.optimizer.state = defaultdict(dict)

    def optimizer_state(self) -> dict | None:
        return self.optimizer.state_dict()

    def load_optimizer(self, state: dict | None, folder: Path | None) -> None:
        if state is not None:
            self.optimizer.load_state_dict(state)

    def save_rank_files(self, folder: Path) -> None:
        """Files each rank writes into the checkpoint folder itself (none for DDP: rank 0 saves all)."""


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO stage 1 or 2 with torch's Adam; bf16 by DeepSpeed's torch_autocast, fp16 with loss scaling.

    Imported inside the worker (an import-time crash in CPU-only actors was reported with some
    triton versions). Adam with L2 weight decay (adam_w_mode false, "torch_adam": true) is the
    same optimizer as the DDP engine's, so the backend changes nothing else.
    """

    _scales_itself = True

    def _build(self, model, device, cfg):
        d = cfg.dist
        if not comm.is_distributed():
            raise ConfigError("dist.backend=deepspeed runs under Ray Train: add --workers N (N >= 1)")
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        views = 2 if cfg.cbt.augment else 1
        per_worker = cfg.data.num_pids * cfg.data.num_instances // (comm.world_size() if d.batch == "global" else 1)
        config = {
            "train_micro_batch_size_per_gpu": 2 * per_worker * views,
            "gradient_accumulation_steps": 1,
            "optimizer": {"type": "Adam", "params": {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay,
                                                     "torch_adam": True, "adam_w_mode": False}},
            "zero_optimization": {"stage": d.zero_stage},
            "torch_autocast": {"enabled": self.precision == "bf16", "dtype": "bfloat16"},
            "fp16": {"enabled": self.precision == "fp16"},
            "steps_per_print": 10**9,
        }
        model.to(memory_format=torch.contiguous_format)  # DeepSpeed flattens parameters: no channels_last
        if self.precision == "fp16":
            model.half()  # DeepSpeed's fp16 mode trains a half module with fp32 master weights
        engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=_params(model), config=config)
        return engine, optimizer

    def __call__(self, images: torch.Tensor):
        return self.net(images.to(next(self.model.parameters()).dtype))

    def step(self, loss: torch.Tensor) -> None:
        self.net.backward(loss)
        self.net.step()

    def reset_optimizer(self) -> None:
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # ZeRO wraps torch's Adam
        inner.state = defaultdict(dict)

    def optimizer_state(self) -> dict | None:
        return None  # partitioned across ranks: each rank saves its part (save_rank_files)

    def save_rank_files(self, folder: Path) -> None:
        self.net.save_checkpoint(str(folder), tag=DEEPSPEED_TAG)

    def load_optimizer(self, state: dict | None, folder: Path | None) -> None:
        files = folder and Path(folder) / DEEPSPEED_TAG
        if files is None or not files.is_dir():
            log.warning("no DeepSpeed optimizer state in the checkpoint: resuming with a fresh optimizer")
            return
        saved_world = len(list(files.glob("zero_pp_rank_*_optim_states.pt")))
        if saved_world != comm.world_size():
            log.warning(f"the checkpoint's optimizer state is partitioned for {saved_world} workers, this run has "
                        f"{comm.world_size()}: resuming the weights with a fresh optimizer")
            return
        self.net.checkpoint_engine.load = _safe_deepspeed_load  # DeepSpeed's own unpickles arbitrary objects
        self.net.load_checkpoint(str(folder), tag=DEEPSPEED_TAG, load_module_strict=True,
                                 load_optimizer_states=True, load_lr_scheduler_states=False)


def _deepspeed_state_classes() -> list:
    """The plain classes DeepSpeed pickles into its ZeRO partitions (loss scaler, stage enum, fragment address)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _safe_deepspeed_load(path: str, map_location=None):
    """DeepSpeed's checkpoint load with weights_only=True: tensors, plain values and DeepSpeed's own data classes."""
    from dmdl_dist.engine.checkpoint import CheckpointError

    try:
        with torch.serialization.safe_globals(_deepspeed_state_classes()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"DeepSpeed checkpoint file {path} refused: it is not plain tensors and DeepSpeed's "
                              f"state ({str(err).splitlines()[0]})") from err


def build_engine(model: torch.nn.Module, device: torch.device, cfg: Config) -> Engine:
    cls = DeepSpeedEngine if cfg.dist.backend == "deepspeed" else Engine
    return cls(model, device, cfg)
