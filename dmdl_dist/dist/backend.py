"""Wraps the network for data-parallel training; the memories stay outside the wrapper.

DDP's broadcast_buffers would overwrite buffers from rank 0 at every forward, and DeepSpeed
casts a module's buffers to half precision: the cluster memories are therefore plain tensors
held by the trainer, never attributes of the wrapped module.
"""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from dmdl_dist.dist import comm


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP when a process group with more than one rank exists, the model itself otherwise."""
    if comm.world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
