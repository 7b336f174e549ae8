"""Training time with the image cache (data.cache_mb) against reading every file, in one run.

    python bench/image_cache.py [--preset synthvi] [--iters 60] [--epochs 1] [--set KEY=VALUE ...]

Trains the preset twice, first with data.cache_mb=0 (every view decoded and resized from its JPEG)
and then with the default cache, for --epochs of stage 1 and of stage 2 (--iters steps each), and
prints the seconds of each epoch's refresh (feature extraction and clustering) and training steps,
and the ratio. Both runs train the same numbers (tests/test_image_cache.py and the resume test check
it bit for bit); only the time differs. Run nothing else beside it: two cores shared distort both.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dmdl_dist.config import load_config
from dmdl_dist.engine.trainer import train


def timed_run(preset: str, overrides: list[str], out: Path) -> dict[str, float]:
    cfg = load_config(preset, overrides=overrides)
    t0 = time.perf_counter()
    train(cfg, out, progress=False, echo=lambda *_a, **_k: None)
    wall = time.perf_counter() - t0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "refresh": sum(h["time"]["refresh"] for h in history),
        "train": sum(h["time"]["train"] for h in history),
        "steps": sum(len(h["step_losses"]["total"]) for h in history),
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="synthvi")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each stage")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = parser.parse_args()
    common = [f"train.iters_per_epoch={args.iters}", f"train.stage1_epochs={args.epochs}",
              f"train.stage2_epochs={args.epochs}", "data.holdout_val=false", "run.report=false", *args.set]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("files", ["data.cache_mb=0"]), ("cache", [])):
            rows[name] = timed_run(args.preset, common + extra, Path(tmp) / name)
    print(f"{args.preset}, {rows['cache']['steps']} steps, seconds summed over {2 * args.epochs} epochs:")
    print(f"{'':8s}{'refresh s':>11s}{'train s':>10s}{'s/step':>9s}{'run s':>8s}")
    for name, r in rows.items():
        print(f"{name:8s}{r['refresh']:11.1f}{r['train']:10.1f}{r['train'] / r['steps']:9.3f}{r['wall']:8.1f}")
    f, c = rows["files"], rows["cache"]
    print(f"cache / files: refresh {c['refresh'] / f['refresh']:.2f}, train {c['train'] / f['train']:.2f}, "
          f"run {c['wall'] / f['wall']:.2f}")


if __name__ == "__main__":
    main()
