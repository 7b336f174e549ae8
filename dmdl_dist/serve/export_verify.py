"""Reading an exported network back: its description, and its parity with the PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dmdl_dist.errors import MissingPathError
from dmdl_dist.serve.export import (
    INFO_KEY,
    INPUT,
    OUTPUT,
    TS_INFO_FILE,
    ExportError,
    FeatureNet,
    quiet_jit,
    require_onnx,
)


def read_export_info(path: str | Path, fmt: str | None = None) -> dict:
    """The description export_network wrote into the file (see export_info)."""
    path, fmt = _existing(path), fmt or format_of(path)
    if fmt == "onnx":
        require_onnx()
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        raw = props.get(INFO_KEY)
    else:
        extra = {TS_INFO_FILE: ""}
        with quiet_jit():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        raw = extra[TS_INFO_FILE] or None
    if raw is None:
        raise ExportError(f"{path} carries no dmdl_dist description; write it with `dmdl export`")
    return json.loads(raw)


def verify_export(path: str | Path, model: nn.Module, images: torch.Tensor, *, fmt: str | None = None) -> float:
    """Largest absolute difference between the exported file's features and the PyTorch model's.

    images: N x 3 x H x W normalised batch; any N (checks the dynamic batch too). The reference is
    FeatureNet(model, flip) with the flip the file was written with. ONNX runs in onnxruntime on the CPU,
    TorchScript through torch.jit.load on the CPU.
    """
    path, fmt = _existing(path), fmt or format_of(path)
    flip = read_export_info(path, fmt)["flip"]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = FeatureNet(model, flip)(images.to(device)).float().cpu().numpy()  # N x D
        model.train(was_training)
        x = images.detach().float().cpu()
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run([OUTPUT], {INPUT: x.numpy()})[0]  # N x D
        else:
            with quiet_jit():
                got = torch.jit.load(str(path), map_location="cpu")(x).numpy()  # N x D
    if got.shape != expected.shape:
        raise ValueError(f"{path} returned features of shape {got.shape}, the model {expected.shape}")
    return float(np.abs(got - expected).max())


def format_of(path: str | Path) -> str:
    """The format a file name implies: *.onnx -> onnx, *.pt / *.pth -> torchscript."""
    name = Path(path).name
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith((".pt", ".pth")):
        return "torchscript"
    raise ExportError(f"cannot tell the format of {path} from its name; name it *.onnx or *.ts.pt, or pass fmt")


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"no exported model at {path}")
    return path
