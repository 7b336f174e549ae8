"""The prepared GPU check: what one GPU does with this project, as one Markdown table.

    python bench/gpu_check.py [--cpu-smoke] [--only tiny knn refresh resnet50] [--out FILE]

Run through bench/gpu_check.sh, which installs the project first. Checks, in order:
  tiny      the tiny preset on 1 GPU with NCCL: through Ray Train (1 worker, gpus_per_worker=1)
            when ray is installed, else in this process in an NCCL process group of one rank
            (the same trainer, comm helpers and DDP wrapper; the table says which ran)
  knn       the exact k-NN at SYSU-MM01 size (34,000 x 2048 unit features, k = 61 = 2 k1 + 1):
            faiss GPU, faiss CPU, torch CPU, torch GPU; seconds each, and whether every backend
            found the same neighbours as torch on the CPU
  refresh   the whole clustering refresh of 34,000 features: k-NN (the GPU backend) + Jaccard + DBSCAN
  resnet50  ResNet-50 training images per second at 288 x 144, batch 64: forward, backward and
            an Adam step, in bf16 (autocast) and fp32
Each check runs in its own process within a time budget; one whose package is missing, which
fails or runs out of time says so in its row instead of stopping the rest.
--cpu-smoke runs every check on the CPU at tiny sizes (gloo instead of NCCL): it proves the
script, not the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ("tiny", "knn", "refresh", "resnet50")


def sizes(smoke: bool) -> dict:
    if smoke:
        return {"n": 2000, "dim": 64, "k1": 30, "batch": 2, "height": 64, "width": 32, "steps": 2, "warmup": 1}
    return {"n": 34000, "dim": 2048, "k1": 30, "batch": 64, "height": 288, "width": 144, "steps": 20, "warmup": 5}


def row(check: str, what: str, figure: str = "", seconds: float | None = None, note: str = "") -> dict:
    return {"check": check, "what": what, "figure": figure,
            "seconds": "" if seconds is None else f"{seconds:.2f}", "note": note}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def features(n: int, dim: int) -> np.ndarray:
    """The ReID-like unit features of bench/clustering.py (about 20 images per identity)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from clustering import features as reid_like

    return reid_like(n, dim)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_tiny(smoke: bool, device: torch.device) -> list[dict]:
    """The tiny preset on one GPU: through Ray with NCCL when ray is installed, else an NCCL group of one rank."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_tiny_") as tmp:
        os.environ.setdefault("DMDL_CACHE", str(Path(tmp) / "cache"))  # the tiny SynthVI is generated there
        return _tiny_run(Path(tmp), device)


def _tiny_run(tmp: Path, device: torch.device) -> list[dict]:
    from dmdl_dist.config import load_config

    gpu = device.type == "cuda"
    try:
        import ray
    except ImportError:
        ray = None
    t0 = time.perf_counter()
    if ray is not None:
        from dmdl_dist.distributed.launcher import launch

        ray.init(address="local", num_cpus=max(2, min(8, os.cpu_count() or 2)), num_gpus=1 if gpu else 0,
                 include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 runtime_env={"env_vars": {"DMDL_CACHE": os.environ["DMDL_CACHE"]}})
        try:
            cfg = load_config("tiny", overrides=["dist.workers=1", f"dist.gpus_per_worker={1 if gpu else 0}",
                                                 f"dist.cpus_per_worker={2 if gpu else 1}", "run.report=false"])
            result = launch(cfg, tmp / "run", progress=False)
        finally:
            ray.shutdown()
        if result.error is not None:
            raise result.error
        how = f"Ray Train, 1 worker, {'NCCL' if gpu else 'gloo'}"
    else:
        import torch.distributed as dist

        from dmdl_dist.distributed.session import LocalSession
        from dmdl_dist.engine.trainer import silent, train

        if gpu:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if gpu else "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}",
                                rank=0, world_size=1)
        try:
            cfg = load_config("tiny", overrides=[f"train.device={device.type}", "run.report=false"])
            train(cfg, tmp / "run", progress=False, echo=silent, session=LocalSession(tmp / "run"))
        finally:
            dist.destroy_process_group()
        how = f"{'NCCL' if gpu else 'gloo'} process group of 1 rank, no Ray (ray is not installed)"
    wall = time.perf_counter() - t0
    recs = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((tmp / "run" / "results.json").read_text())
    maps = [v["mean"]["mAP"] for v in results["test"].values() if isinstance(v, dict) and "mean" in v]
    figure = f"{len(recs)} epochs, {np.mean([r['images_per_s'] for r in recs]):.0f} img/s"
    note = f"{how}; refresh {np.mean([r['time']['refresh'] for r in recs]):.1f} s/epoch"
    if maps:
        note += f"; test mAP {maps[0]:.1f}"
    return [row("tiny preset", "train + test, 1 worker", figure, wall, note)]


def _knn_backends(device: torch.device) -> list[tuple[str, str, str]]:
    """(label, backend, device) of each search, the reference (torch on the CPU) first."""
    out = [("torch CPU", "torch", "cpu"), ("faiss CPU", "faiss", "cpu")]
    if device.type == "cuda":
        out += [("faiss GPU", "faiss", str(device)), ("torch GPU", "torch", str(device))]
    return out


def check_knn(smoke: bool, device: torch.device) -> list[dict]:
    from dmdl_dist.clustering.jaccard import jaccard_k
    from dmdl_dist.clustering.knn import faiss_available, gpu_available, knn

    s = sizes(smoke)
    x = features(s["n"], s["dim"])
    k = jaccard_k(s["n"], s["k1"])
    rows, ref = [], None
    what = f"{s['n']} x {s['dim']}, k = {k}"
    for label, backend, where in _knn_backends(device):
        if backend == "faiss" and not faiss_available():
            rows.append(row("k-NN", f"{label}, {what}", note="skipped: faiss is not installed"))
            continue
        if backend == "faiss" and where != "cpu" and not gpu_available():
            rows.append(row("k-NN", f"{label}, {what}", note="skipped: this faiss has no GPU (faiss-cpu build)"))
            continue
        knn(x[:256], k, backend=backend, device=where)  # warm-up: faiss GPU resources, CUDA context, BLAS threads
        t0 = time.perf_counter()
        _, idx = knn(torch.from_numpy(x).to(where), k, backend=backend, device=where)
        secs = time.perf_counter() - t0
        if ref is None:
            ref, note = idx, "the reference"
        else:
            differ = int((idx != ref).any(axis=1).sum())
            note = "same neighbours as torch CPU" if differ == 0 else f"{differ} rows differ from torch CPU"
        rows.append(row("k-NN", f"{label}, {what}", f"{s['n'] / secs:,.0f} queries/s", secs, note))
    return rows


def check_refresh(smoke: bool, device: torch.device) -> list[dict]:
    from dmdl_dist.clustering.knn import gpu_available
    from dmdl_dist.clustering.pseudo_labels import cluster_features

    s = sizes(smoke)
    x = features(s["n"], s["dim"])
    if device.type == "cuda":
        backend = "faiss" if gpu_available() else "torch"
    else:
        backend = "torch"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    labels = cluster_features(x, k1=s["k1"], k2=6, eps=0.6, min_samples=4, timings=timings, tag="all",
                              knn_backend=backend, device=str(device))
    total = time.perf_counter() - t0
    split = ", ".join(f"{name} {timings[f'{name}_all']:.2f} s" for name in ("knn", "jaccard", "dbscan"))
    figure = f"{int(labels.max()) + 1} clusters, {float((labels < 0).mean()):.0%} outliers"
    return [row("clustering refresh", f"{s['n']} x {s['dim']}, k1 = {s['k1']}, {backend} k-NN on {device.type}",
                figure, total, split)]


def check_resnet50(smoke: bool, device: torch.device) -> list[dict]:
    return [resnet50_speed(precision, sizes(smoke), device) for precision in ("bf16", "fp32")]


def resnet50_speed(precision: str, s: dict, device: torch.device) -> dict:
    """Images per second of ResNet-50 training steps (forward, backward, Adam) on random images."""
    from dmdl_dist.models.backbone import build_model

    torch.manual_seed(0)
    model = build_model("resnet50").to(device).train()
    head = torch.nn.Linear(model.feat_dim, 100).to(device)  # an identity classifier: a loss to step on
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3.5e-4)
    images = torch.randn(s["batch"], 3, s["height"], s["width"], device=device)  # B x 3 x H x W
    target = torch.randint(0, 100, (s["batch"],), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            _, bn = model(images)  # B x 2048
            loss = torch.nn.functional.cross_entropy(head(bn).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(s["warmup"]):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(s["steps"]):
        step()
    sync(device)
    secs = time.perf_counter() - t0
    return row("ResNet-50 training", f"{precision}, batch {s['batch']}, {s['height']} x {s['width']}",
               f"{s['batch'] * s['steps'] / secs:,.0f} img/s", secs,
               f"{s['steps']} steps after {s['warmup']} warm-up: forward, backward, Adam")


RUNNERS = {"tiny": check_tiny, "knn": check_knn, "refresh": check_refresh, "resnet50": check_resnet50}
TITLES = {"tiny": "tiny preset", "knn": "k-NN", "refresh": "clustering refresh", "resnet50": "ResNet-50 training"}
# Seconds each check may take (about a third of that on an H200 host): 7 minutes in all.
BUDGET_S = {"tiny": 150, "knn": 100, "refresh": 90, "resnet50": 80}


def environment(device: torch.device) -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    if device.type == "cuda":
        parts.append(f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    else:
        parts.append("CPU only")
    for name in ("faiss", "ray"):
        try:
            module = __import__(name)
            parts.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            parts.append(f"no {name}")
    parts.append(f"{os.cpu_count()} CPUs")
    return ", ".join(parts)


def table(rows: list[dict]) -> str:
    lines = ["| check | what | figure | seconds | note |", "| --- | --- | --- | ---: | --- |"]
    lines += [f"| {r['check']} | {r['what']} | {r['figure']} | {r['seconds']} | {r['note']} |" for r in rows]
    return "\n".join(lines)


def run_child(name: str, smoke: bool) -> list[dict]:
    """One check in a fresh process (its own CUDA context, process group and Ray), within its time budget."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, __file__, "--child", name, "--rows", str(out), *(["--cpu-smoke"] if smoke else [])]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, timeout=BUDGET_S[name])
        except subprocess.TimeoutExpired:
            return [row(TITLES[name], "failed", "", time.perf_counter() - t0, f"timed out after {BUDGET_S[name]} s")]
        if out.is_file():
            return json.loads(out.read_text())
        return [row(TITLES[name], "failed", "", time.perf_counter() - t0, f"exit code {done.returncode}")]


def child(name: str, smoke: bool, rows_file: str) -> None:
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    t0 = time.perf_counter()
    try:
        rows = RUNNERS[name](smoke, device)
    except Exception as err:  # the row says what failed; the traceback goes to stderr
        traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else ""
        rows = [row(TITLES[name], "failed", "", time.perf_counter() - t0, f"{type(err).__name__}: {first}"[:200])]
    Path(rows_file).write_text(json.dumps(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="every check on the CPU at tiny sizes")
    p.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS))
    p.add_argument("--out", default=None, help="also write the table here (default: $OUT/gpu_check.md when OUT is set)")
    p.add_argument("--child", choices=CHECKS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.cpu_smoke, args.rows)
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device is visible; run with --cpu-smoke to check the script on the CPU")
    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda", 0)
    rows = []
    for name in args.only:
        t0 = time.perf_counter()
        print(f"gpu_check: {name} (at most {BUDGET_S[name]} s) ...", flush=True)
        rows += run_child(name, args.cpu_smoke)
        print(f"gpu_check: {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    title = "CPU smoke run (tiny sizes)" if args.cpu_smoke else "GPU check"
    text = f"{title}: {environment(device)}\n\n{table(rows)}\n"
    print("\n" + text)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_check.md") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        Path(out).with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
