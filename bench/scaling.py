"""Images per second and clustering-refresh time of one training run per worker count.

    python bench/scaling.py [--workers 1 2] [--preset tiny] [--backend ddp|deepspeed] [--sharded]
                            [--gpus-per-worker 0] [--set KEY=VALUE ...]

Each worker count trains the same config under Ray Train for its epochs and reads the
per-epoch records it wrote (metrics.jsonl); the first epoch is skipped as warm-up when there are
more. On a GPU node: `python bench/scaling.py --workers 1 2 4 8 --gpus-per-worker 1 --preset synthvi`.
Figures are ratios within one run of this script: compare nothing across machines or runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--backend", choices=("ddp", "deepspeed"), default="ddp")
    p.add_argument("--sharded", action="store_true", help="sharded (PartialFC) cluster memory")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    import ray

    from dmdl_dist.config import load_config
    from dmdl_dist.distributed.launcher import connect, launch

    connect()  # the cluster RAY_ADDRESS names (auto: the one `ray start` runs here), else a private one
    cpus = args.cpus_per_worker or max(0.5, min(1.0, ray.cluster_resources().get("CPU", 1) / max(args.workers)))
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for n in args.workers:
            cfg = load_config(args.preset, overrides=[*args.overrides, f"dist.workers={n}",
                                                       f"dist.gpus_per_worker={args.gpus_per_worker}",
                                                       f"dist.cpus_per_worker={cpus}", f"dist.backend={args.backend}",
                                                       f"memory.sharded={args.sharded}", "run.report=false"])
            t0 = time.perf_counter()
            result = launch(cfg, Path(out) / f"w{n}", progress=False)
            wall = time.perf_counter() - t0
            if result.error is not None:
                raise result.error
            recs = [json.loads(line) for line in (Path(out) / f"w{n}" / "metrics.jsonl").read_text().splitlines()]
            recs = recs[1:] if len(recs) > 1 else recs
            rows.append((n, np.mean([r["images_per_s"] for r in recs]), np.mean([r["time"]["refresh"] for r in recs]),
                         np.mean([r["time"].get("refresh_extract", 0) for r in recs]), wall))
    ray.shutdown()
    base = rows[0][1]
    print(f"{args.preset}, {args.backend}{' sharded memory' if args.sharded else ''}, {cpus} CPU"
          f"{f' {args.gpus_per_worker} GPU' if args.gpus_per_worker else ''} per worker")
    print(f"{'workers':>7} {'img/s':>8} {'speed-up':>8} {'refresh s':>9} {'extract s':>9} {'wall s':>7}")
    for n, ips, refresh, extract, wall in rows:
        print(f"{n:>7} {ips:8.1f} {ips / base:8.2f} {refresh:9.2f} {extract:9.2f} {wall:7.1f}")


if __name__ == "__main__":
    main()
