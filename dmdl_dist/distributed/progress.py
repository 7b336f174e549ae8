"""The driver's view of a Ray Train run: one progress line per epoch, built from rank 0's report."""

from __future__ import annotations

import sys
import time


def progress_line(metrics: dict, total_epochs: int) -> str:
    """A one-line summary of an epoch from the flat metrics every worker reports (session.flat_metrics)."""
    losses = " ".join(f"{k.split('.', 1)[1]} {v:.3f}" for k, v in metrics.items() if k.startswith("losses."))
    line = (f"epoch {metrics.get('epoch', 0):>3}/{total_epochs} [stage {metrics.get('stage', '?')}] {losses}"
            f" | clusters V {metrics.get('clusters.0', 0)} I {metrics.get('clusters.1', 0)}")
    if metrics.get("stage") == 2:
        line += f" assoc {metrics.get('association_rate', 0):.0%}"
    line += (f" | refresh {metrics.get('time.refresh', 0):.1f}s train {metrics.get('time.train', 0):.1f}s"
             f" {metrics.get('images_per_s', 0):.0f} img/s x {metrics.get('workers', 1)} workers")
    if "val_mAP" in metrics:
        line += f" | val R1 {metrics['val_rank1']:.1f} mAP {metrics['val_mAP']:.1f}"
    return line


def epoch_printer(total_epochs: int):
    """A ray.train.UserCallback printing progress_line after each report (it runs in Ray's controller,
    whose output Ray forwards to the driver's console)."""
    import ray.train

    class EpochPrinter(ray.train.UserCallback):
        def __init__(self):
            self.start = time.time()

        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0]:
                elapsed = time.time() - self.start
                print(f"{progress_line(metrics[0], total_epochs)} | {elapsed / 60:.1f} min", file=sys.stderr,
                      flush=True)

        def after_exception(self, run_context, worker_exceptions):
            for rank, err in worker_exceptions.items():
                print(f"worker {rank} failed: {err!r}", file=sys.stderr, flush=True)

    return EpochPrinter()
