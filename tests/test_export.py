"""`dmdl export`: ONNX and TorchScript files give the PyTorch model's features, for any batch size."""

import argparse
import re
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmdl_dist.commands.serve import COMMANDS, add_parsers
from dmdl_dist.config import load_config, to_dict
from dmdl_dist.engine.checkpoint import save_atomic
from dmdl_dist.models.backbone import build_model
from dmdl_dist.serve.export import EXAMPLE_BATCH, MissingExtraError, default_export_path, export_info, export_network
from dmdl_dist.serve.export_verify import format_of, read_export_info, verify_export
from dmdl_dist.serve.inference import load_model

TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A trainer-shaped checkpoint of the small network: random weights, BN statistics moved off 0/1."""
    torch.manual_seed(0)
    model = build_model("small")
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 64, 32) * 2 + 0.5)  # running means/vars that export must fold in
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_atomic({"model": model.state_dict(), "config": to_dict(load_config("tiny")), "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model, cfg = load_model(checkpoint, torch.device("cpu"))
    assert (cfg.data.height, cfg.data.width) == (64, 32)  # the tiny preset's size, used by every batch below
    return model, cfg


def _run_exported(path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """The exported file's output, run without dmdl_dist's helpers."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # this PyTorch deprecates torch.jit
        return torch.jit.load(str(path))(images).numpy()


# The CLI test below covers the other two pairs (onnx with --flip, torchscript without).
@pytest.mark.parametrize("fmt,flip", [("onnx", False), ("torchscript", True)])
def test_exported_features_match_pytorch_for_any_batch(loaded, tmp_path, fmt, flip):
    model, cfg = loaded
    info = export_info(height=64, width=32, feat_dim=model.feat_dim, flip=flip, arch=cfg.model.arch)
    out = export_network(model, tmp_path / f"m{'.onnx' if fmt == 'onnx' else '.ts.pt'}", fmt, info)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # one file, no temp or .data left beside it
    assert read_export_info(out)["flip"] is flip and read_export_info(out)["height"] == 64

    torch.manual_seed(1)
    images = torch.randn(5, 3, 64, 32)  # not the example batch of the export: the batch is dynamic
    assert EXAMPLE_BATCH != 5
    with torch.no_grad():
        single = F.normalize(model(images)[1], dim=1)  # N x D
        expected = (model.extract(images) if flip else single).numpy()
    got = _run_exported(out, fmt, images)
    assert got.shape == (5, model.feat_dim)
    assert np.abs(got - expected).max() < TOL
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    if flip:  # the mirror really runs inside: the single-view feature is not what comes out
        assert np.abs(got - single.numpy()).max() > 1e-3
    assert _run_exported(out, fmt, images[:1]).shape == (1, model.feat_dim)  # a batch of one too
    assert verify_export(out, model, images) < TOL


def test_verify_export_notices_another_model(loaded, tmp_path):
    model, cfg = loaded
    info = export_info(height=64, width=32, feat_dim=model.feat_dim, flip=False, arch=cfg.model.arch)
    out = export_network(model, tmp_path / "m.ts.pt", "torchscript", info)
    torch.manual_seed(2)
    other = build_model("small").eval()
    assert verify_export(out, other, torch.randn(3, 3, 64, 32)) > 1e-2


@pytest.mark.parametrize("fmt,flip,suffix", [("onnx", True, ".onnx"), ("torchscript", False, ".ts.pt")])
def test_cli_writes_beside_the_checkpoint_and_prints_parity(checkpoint, capsys, fmt, flip, suffix):
    parser = argparse.ArgumentParser(prog="dmdl")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", "--checkpoint", str(checkpoint), "--format", fmt] + ["--flip"] * flip)
    assert COMMANDS[args.command](args) == 0

    out = checkpoint.with_name("best" + suffix)
    assert default_export_path(checkpoint, fmt) == out and out.stat().st_size > 100_000
    assert read_export_info(out)["flip"] is flip
    assert not [p for p in checkpoint.parent.iterdir() if ".tmp-" in p.name]
    printed = capsys.readouterr().out
    assert str(out) in printed and "64 x 32" in printed
    diff = float(re.search(r"max \|difference\| = (\S+)", printed).group(1))
    assert 0 <= diff < TOL


def test_onnx_without_its_packages_names_the_extra(loaded, tmp_path, monkeypatch):
    model, cfg = loaded
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    info = export_info(height=64, width=32, feat_dim=model.feat_dim, flip=False, arch=cfg.model.arch)
    with pytest.raises(MissingExtraError, match=r"onnxruntime missing.*pip install 'dmdl-dist\[export\]'"):
        export_network(model, tmp_path / "m.onnx", "onnx", info)
    assert not list(tmp_path.iterdir())


def test_bad_format_and_names_are_clear_errors(loaded, tmp_path):
    model, cfg = loaded
    info = export_info(height=64, width=32, feat_dim=model.feat_dim, flip=False, arch=cfg.model.arch)
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_network(model, tmp_path / "m.tflite", "tflite", info)
    with pytest.raises(ValueError, match="cannot tell the format"):
        format_of("model.bin")
    with pytest.raises(FileNotFoundError, match="no exported model"):
        verify_export(tmp_path / "absent.onnx", model, torch.zeros(1, 3, 64, 32))
