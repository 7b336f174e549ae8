"""`dmdl export` and `dmdl search`: using a trained checkpoint outside training (dmdl_dist/serve/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dmdl_dist.commands.common import positive_int

PARITY_BATCH = 3  # images in the parity check after export: not the export's example batch of 2


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the inference network as ONNX or TorchScript",
                       description="Writes the network that maps an N x 3 x H x W ImageNet-normalised image batch "
                                   "to L2-normalised N x D features, then prints its parity with PyTorch.")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True,
                   help="onnx (recommended; runs in onnxruntime) or torchscript (deprecated by PyTorch)")
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default: beside the checkpoint, <stem>.onnx or <stem>.ts.pt)")
    p.add_argument("--flip", action="store_true",
                   help="put flip-averaging inside (the features `dmdl eval` uses; twice the compute)")

    p = sub.add_parser("search", help="rank the images of a folder by similarity to a query image")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--gallery", type=Path, required=True,
                   help="folder of .jpg/.jpeg/.png/.bmp images (recursive); the index is cached in DIR/.dmdl_index")
    p.add_argument("--query", type=Path, required=True, help="query image")
    p.add_argument("--top", type=positive_int, default=10, help="how many gallery images to list (default 10)")
    p.add_argument("--out", type=Path, default=None, help="also draw the ranked list into this PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while the gallery is indexed")


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from dmdl_dist.engine.atomic import ensure_writable
    from dmdl_dist.serve.export import default_export_path, export_info, export_network, require_onnx
    from dmdl_dist.serve.export_verify import verify_export
    from dmdl_dist.serve.inference import load_model

    if args.format == "onnx":
        require_onnx()  # before the checkpoint is read
    out = ensure_writable(args.out or default_export_path(args.checkpoint, args.format))
    model, cfg = load_model(args.checkpoint, torch.device("cpu"))
    info = export_info(height=cfg.data.height, width=cfg.data.width, feat_dim=model.feat_dim, flip=args.flip,
                       arch=cfg.model.arch)
    export_network(model, out, args.format, info)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(PARITY_BATCH, 3, cfg.data.height, cfg.data.width, generator=generator)
    diff = verify_export(out, model, images, fmt=args.format)
    print(f"wrote {out} ({args.format}): {info['input']} -> {info['output']}")
    print(f"parity with PyTorch on {PARITY_BATCH} random images: max |difference| = {diff:.2e}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from dmdl_dist.engine.atomic import ensure_writable
    from dmdl_dist.serve.search import format_hits, search

    if args.out is not None:
        ensure_writable(args.out)  # before the gallery is indexed
    result = search(args.checkpoint, args.gallery, args.query, top=args.top, progress=not args.no_progress)
    print(format_hits(result))
    if args.out is not None:
        from dmdl_dist.serve.search_figure import ranked_picture

        images = [result.gallery / hit.path for hit in result.hits]
        ranked_picture(result.query, images, [hit.score for hit in result.hits], args.out)
        print(f"ranked list picture: {args.out}")
    return 0


COMMANDS = {"export": cmd_export, "search": cmd_search}
