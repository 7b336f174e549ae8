"""The inference network alone, as ONNX or TorchScript, for serving without dmdl_dist.

What an exported file computes:
  input  "images":   N x 3 x H x W float32, any N: RGB resized to H x W (the checkpoint's data.height and
                     data.width) and normalised with ImageNet's mean and std, as data/transforms.py's
                     test_transform does
  output "features": N x D float32, the L2-normalised BN-neck feature, so cosine similarity is a dot product
With flip=False (the default) it is the feature of the image as given, extract_features(flip=False). With
flip=True the mirror image runs inside too and the output is the flip-averaged test-time feature
(ReIDNet.extract, what `dmdl eval` and `dmdl search` use) at twice the cost. Each file carries this
description as JSON (ONNX metadata_props "dmdl", TorchScript extra file "dmdl.json"); export_verify.py
reads it back and compares a file's features with the PyTorch model's.
"""

from __future__ import annotations

import copy
import importlib
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from dmdl_dist.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dmdl_dist.engine.atomic import atomic_path
from dmdl_dist.errors import DmdlError, MissingExtraError

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts.pt"}
INPUT, OUTPUT = "images", "features"
INFO_KEY, TS_INFO_FILE = "dmdl", "dmdl.json"
# torch.export treats a dimension it sees as 0 or 1 as a constant, so the example batch holds 2 images.
EXAMPLE_BATCH = 2


class ExportError(DmdlError, ValueError):
    """An export format or exported file that dmdl_dist cannot handle."""


class FeatureNet(nn.Module):
    """The exported computation: images N x 3 x H x W -> L2-normalised BN-neck features N x D."""

    def __init__(self, model: nn.Module, flip: bool = False) -> None:
        super().__init__()
        self.net, self.flip = model, flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract(images, flip=self.flip)  # N x D, normalised (flip-averaged with flip)


def default_export_path(checkpoint: str | Path, fmt: str) -> Path:
    """Beside the checkpoint: runs/x/best.pt -> runs/x/best.onnx or runs/x/best.ts.pt."""
    _check_format(fmt)
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIXES[fmt])


def export_info(*, height: int, width: int, feat_dim: int, flip: bool, arch: str) -> dict:
    """The description written into an exported file."""
    feature = "flip-averaged test-time feature" if flip else "feature of the image as given (no flip-averaging)"
    return {
        "input": f"{INPUT}: N x 3 x {height} x {width} float32 RGB, ImageNet-normalised (mean {IMAGENET_MEAN}, "
                 f"std {IMAGENET_STD})",
        "output": f"{OUTPUT}: N x {feat_dim} float32, L2-normalised BN-neck {feature}",
        "height": height, "width": width, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "feat_dim": feat_dim, "flip": flip, "arch": arch,
    }


def export_network(model: nn.Module, out: str | Path, fmt: str, info: dict) -> Path:
    """Writes FeatureNet(model, info["flip"]) to `out` atomically; info["height"/"width"] fix the input size.

    The model is copied to the CPU first: the file runs on any device and the caller's model is untouched.
    """
    _check_format(fmt)
    if fmt == "onnx":
        require_onnx()
    net = FeatureNet(copy.deepcopy(model).cpu().float(), info["flip"]).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_BATCH, 3, info["height"], info["width"], generator=generator)
    with atomic_path(out) as tmp, torch.no_grad():
        if fmt == "onnx":
            _write_onnx(net, example, tmp, info)
        else:
            _write_torchscript(net, example, tmp, info)
    return Path(out)


def _write_onnx(net: nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    import onnx

    # dynamo=True (torch.export). The TorchScript-based exporter (dynamo=False) also works offline here and
    # gives the same features, but warns that it will be removed. external_data=False keeps the weights in
    # the one .onnx file (the dynamo exporter otherwise writes a .onnx.data beside it), so one rename
    # publishes the model; ONNX's 2 GB limit is far above ResNet-50's 100 MB.
    torch.onnx.export(
        net, (example,), str(path), dynamo=True, external_data=False, verbose=False,
        input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}},
    )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {INFO_KEY: json.dumps(info)})
    proto.doc_string = f"dmdl_dist re-id features. {info['input']} -> {info['output']}"
    onnx.save(proto, str(path))


def _write_torchscript(net: nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    # Traced, not scripted: torch.jit.script rejects Trunk.forward's zip over ModuleLists. Tracing keeps the
    # batch dimension symbolic (the tests run another batch size); H and W are fixed by the network anyway.
    # check_trace=False: its re-run costs 3x the trace, and verify_export checks more (another batch size).
    with quiet_jit():
        traced = torch.jit.trace(net, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TS_INFO_FILE: json.dumps(info)})


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silences torch.jit's deprecation warnings for the block."""
    # This PyTorch deprecates torch.jit in favour of torch.export and warns on every call; someone who asks
    # for --format torchscript chose it knowingly (the CLI help recommends onnx), so the warnings are noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


def require_onnx() -> None:
    """Raises MissingExtraError naming the pip command when the ONNX tools are missing."""
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtraError(
            f"ONNX export needs onnx, onnxruntime and onnxscript ({', '.join(missing)} missing): "
            "pip install 'dmdl-dist[export]'"
        )


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
