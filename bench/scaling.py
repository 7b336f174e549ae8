"""Seconds per epoch, images per second and the clustering refresh's split, per worker count.

    python bench/scaling.py [--workers 1 2] [--preset tiny] [--backend ddp|deepspeed] [--sharded]
                            [--gpus-per-worker 0] [--cpus-per-worker C] [--set KEY=VALUE ...]
                            [--address HOST:PORT] [--json FILE]

Each worker count trains the same config under Ray Train (`dmdl train` with dist.workers=N,
through distributed/launcher.py) and reads the per-epoch records it wrote (metrics.jsonl); the
first epoch is skipped as warm-up when there are more. Printed per worker count: seconds per
epoch (refresh + train + validation) against the ideal line, one worker's seconds / N; images
per second in all and per worker (the training phase); the refresh split into its phases (the
records' time.refresh_* keys: extract, gather of the features and of the k-NN lists, k-NN,
Jaccard, DBSCAN, association, broadcast, memory); and each rank's own k-NN seconds (the
clustering service gives every worker a slice of the search). It starts a private local Ray
cluster unless --address names one. On a GPU node:
`python bench/scaling.py --workers 1 2 4 8 --gpus-per-worker 1 --preset synthvi`.
Figures are ratios within one run of this script: compare nothing across machines or runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

# Refresh phases: the record's time.refresh_<key> entries summed into each column (suffixes are modalities).
PHASES = {
    "extract": ("extract",),
    "gather": ("gather", "knn_gather_"),
    "knn": ("knn_visible", "knn_infrared"),
    "jaccard": ("jaccard_",),
    "dbscan": ("dbscan_",),
    "association": ("association",),
    "broadcast": ("broadcast",),
    "memory": ("memory",),
}


def phase_seconds(times: dict, phase: str) -> float:
    """A refresh phase's seconds in one record's time dict: its keys, or every key starting with a prefix_."""
    total = 0.0
    for key, value in times.items():
        if not key.startswith("refresh_"):
            continue
        name = key[len("refresh_"):]
        if any(name == p or (p.endswith("_") and name.startswith(p)) for p in PHASES[phase]):
            total += value
    return total


def rank_knn_seconds(times: dict, world: int) -> list[float]:
    """Each rank's own k-NN search seconds, both modalities summed (the service's knn_rank<r>_<modality>)."""
    return [sum(v for k, v in times.items() if k.startswith(f"refresh_knn_rank{r}_")) for r in range(world)]


def summarise(n: int, records: list[dict], wall: float) -> dict:
    recs = records[1:] if len(records) > 1 else records
    epoch = [r["time"]["refresh"] + r["time"]["train"] + r["time"].get("val", 0.0) for r in recs]
    ips = float(np.mean([r["images_per_s"] for r in recs]))
    return {
        "workers": n, "epochs": len(recs), "epoch_s": float(np.mean(epoch)), "images_per_s": ips,
        "images_per_s_per_worker": ips / n, "refresh_s": float(np.mean([r["time"]["refresh"] for r in recs])),
        "train_s": float(np.mean([r["time"]["train"] for r in recs])),
        "phases": {p: float(np.mean([phase_seconds(r["time"], p) for r in recs])) for p in PHASES},
        "knn_per_rank": [float(v) for v in np.mean([rank_knn_seconds(r["time"], n) for r in recs], axis=0)],
        "wall_s": wall,
    }


def tables(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        f"{'workers':>7} {'epoch s':>8} {'ideal s':>8} {'ideal/act':>9} {'img/s':>8} {'img/s/wkr':>9} "
        f"{'refresh s':>9} {'train s':>8} {'wall s':>7}"
    ]
    for r in rows:
        ideal = base["epoch_s"] * base["workers"] / r["workers"]
        lines.append(
            f"{r['workers']:>7} {r['epoch_s']:8.2f} {ideal:8.2f} {ideal / r['epoch_s']:9.2f} {r['images_per_s']:8.1f} "
            f"{r['images_per_s_per_worker']:9.1f} {r['refresh_s']:9.2f} {r['train_s']:8.2f} {r['wall_s']:7.1f}"
        )
    lines += ["", "refresh split, seconds per epoch (knn per rank: each worker's own slice of the search)",
              f"{'workers':>7} " + " ".join(f"{p:>11}" for p in PHASES) + "  knn per rank"]
    for r in rows:
        per_rank = " ".join(f"{v:.3f}" for v in r["knn_per_rank"])
        lines.append(f"{r['workers']:>7} " + " ".join(f"{r['phases'][p]:11.3f}" for p in PHASES) + f"  {per_rank}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--backend", choices=("ddp", "deepspeed"), default="ddp")
    p.add_argument("--sharded", action="store_true", help="sharded (PartialFC) cluster memory")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--address", default=None, help="a running Ray cluster to use (HOST:PORT or auto); "
                   "default: a private local one")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    import ray

    from dmdl_dist.config import load_config
    from dmdl_dist.distributed.launcher import connect, launch

    connect(args.address)  # a private local cluster on 127.0.0.1 unless --address names one (workers inherit env)
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
            lines = (Path(out) / f"w{n}" / "metrics.jsonl").read_text().splitlines()
            rows.append(summarise(n, [json.loads(line) for line in lines], wall))
    ray.shutdown()
    print(f"{args.preset}, {args.backend}{' sharded memory' if args.sharded else ''}, {cpus} CPU"
          f"{f' {args.gpus_per_worker} GPU' if args.gpus_per_worker else ''} per worker; "
          f"{rows[0]['epochs']} epoch(s) per count after warm-up")
    print(tables(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
