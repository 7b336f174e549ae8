"""The driver's view of a Ray Train run: one line per epoch and one per worker-group restart.

Ray Train calls its callbacks in the Train controller, an actor whose output Ray forwards to the
driver with a `(TrainController pid=...)` prefix. So the controller only sends what happened
through a Ray queue, and the driver prints it as plain lines (RunConsole), and keeps the last
checkpointed epoch for the message a failed run ends with.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

POLL_S = 0.5  # how often the driver's printing thread looks for the end of the run


def progress_line(metrics: dict, total_epochs: int) -> str:
    """A one-line summary of an epoch from the flat metrics every worker reports (session.flat_metrics)."""
    losses = " ".join(f"{k.split('.', 1)[1]} {v:.3f}" for k, v in metrics.items() if k.startswith("losses."))
    line = (f"epoch {metrics.get('epoch', 0):>3}/{total_epochs} [stage {metrics.get('stage', '?')}] {losses}"
            f" | clusters V {metrics.get('clusters.0', 0)} I {metrics.get('clusters.1', 0)}")
    if metrics.get("stage") == 2:
        line += (f" anchor {'VI'[int(metrics.get('anchor', 1))]} shared {metrics.get('num_shared', 0)}"
                 f" assoc {metrics.get('association_rate', 0):.0%}")
    line += (f" | refresh {metrics.get('time.refresh', 0):.1f}s train {metrics.get('time.train', 0):.1f}s"
             f" {metrics.get('images_per_s', 0):.0f} img/s x {metrics.get('workers', 1)} workers")
    if "val_mAP" in metrics:
        line += f" | val R1 {metrics['val_rank1']:.1f} mAP {metrics['val_mAP']:.1f}"
    if metrics.get("degenerate_epochs"):
        line += f" | WARNING degenerate clustering ({metrics['degenerate_epochs']} epoch(s) in a row)"
    return line


def worker_died(err: BaseException) -> bool:
    """Whether a worker's failure is its process or node going away (a kill, OOM, a lost node), not an error
    raised by the training code."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, NodeDiedError, RayActorError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ActorDiedError, ActorUnavailableError, NodeDiedError, RayActorError)):
            return True
        if type(err).__name__ == "WorkerHealthCheckTimeoutError":  # Ray Train's: the worker stopped answering
            return True
        # Ray Train's WorkerHealthCheckFailedError keeps the actor's death in health_check_failure
        err = getattr(err, "health_check_failure", None) or err.__cause__
    return False


def failure_summary(err: BaseException) -> str:
    """'died', or the type and first line of the error a worker raised (Ray Train keeps it in `_base_exc`)."""
    if worker_died(err):
        return "died"
    base = getattr(err, "_base_exc", None) or err
    first = (str(base).strip().splitlines() or [""])[0]
    return f"raised {type(base).__name__}" + (f": {first[:120]}" if first else "")


def restart_line(summaries: dict[int, str], last_epoch: int, restart: int, max_failures: int) -> str:
    """One line for a failed worker group that Ray Train restarts."""
    died = [r for r, s in summaries.items() if s == "died"]
    if died:  # the other ranks' errors follow from the death (a collective with a missing peer)
        what = f"worker {', '.join(map(str, died))} died"
    else:
        by_text: dict[str, list[int]] = {}
        for rank, text in sorted(summaries.items()):
            by_text.setdefault(text, []).append(rank)
        what = "; ".join(f"worker {', '.join(map(str, ranks))} {text}" for text, ranks in by_text.items())
    start = f"epoch {last_epoch}'s checkpoint" if last_epoch else "the start"
    return f"{what}; restarting the worker group from {start} (restart {restart} of {max_failures})"


class RunConsole:
    """The driver's printer of one run: a queue the controller writes to and a thread that prints it.

    Use as a context manager around `trainer.fit()`; `callback()` goes into the trainer's RunConfig.
    """

    def __init__(self, total_epochs: int, max_failures: int, *, show_epochs: bool = True, out=None,
                 warning: Callable[[int, str], str] | None = None):
        from ray.util.queue import Queue

        self.total_epochs = total_epochs
        self.max_failures = max_failures
        self.show_epochs = show_epochs
        self.warning = warning  # (epoch, a degenerate clustering's problems) -> the line local mode prints
        self.out = out or sys.stderr
        self.last_epoch = 0  # the newest epoch whose checkpoint Ray registered
        self.failures = 0
        self.queue = Queue(actor_options={"num_cpus": 0})
        self._start = time.time()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dmdl-run-console", daemon=True)

    def callback(self):
        return _controller_callback(self.queue)

    def __enter__(self) -> RunConsole:
        self._start = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self._drain()
        self.queue.shutdown()

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._done.is_set():
            try:
                self.handle(*self.queue.get(timeout=POLL_S))
            except Empty:
                continue

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                self.handle(*self.queue.get(block=False))
            except Empty:
                return

    def handle(self, kind: str, payload) -> None:
        if kind == "epoch":
            self.last_epoch = int(payload.get("epoch", self.last_epoch))
            if self.show_epochs:
                elapsed = (time.time() - self._start) / 60
                if self.warning is not None and payload.get("degenerate"):
                    self._print(self.warning(self.last_epoch, payload["degenerate"]))
                self._print(f"{progress_line(payload, self.total_epochs)} | {elapsed:.1f} min")
        elif kind == "failure":
            summaries, user_error = payload
            self.failures += 1
            # a restart follows, unless restarts are used up or the error is the user's (raytrainer.py)
            if self.failures <= self.max_failures and not user_error:
                self._print(restart_line(summaries, self.last_epoch, self.failures, self.max_failures))

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _controller_callback(queue):
    """The ray.train.UserCallback that runs in the Train controller and feeds the driver's RunConsole."""
    import ray.train

    class RunReporter(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0]:
                queue.put(("epoch", metrics[0]))

        def after_exception(self, run_context, worker_exceptions):
            from dmdl_dist.distributed.launcher import unwrap_user_error

            summaries = {rank: failure_summary(err) for rank, err in worker_exceptions.items()}
            user_error = any(unwrap_user_error(err) is not None for err in worker_exceptions.values())
            queue.put(("failure", (summaries, user_error)))

    return RunReporter()


def trial_printer(max_epochs: int, out=None):
    """A ray.tune.Callback for the sweep's driver: one line when a trial starts (its sampled values), one per
    epoch it reports, and one when it ends; what Tune's own tables show with --verbose, in lines."""
    from ray import tune

    class TrialLines(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            values = ", ".join(f"{k}={_short(v)}" for k, v in sorted(trial.config.items()))
            self._print(f"trial {trial.trial_id} started: {values}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            line = f"trial {trial.trial_id} epoch {result.get('epoch', '?')}/{max_epochs}"
            if "val_mAP" in result:
                line += f" | val R1 {result.get('val_rank1', 0):.1f} mAP {result['val_mAP']:.1f}"
            self._print(line)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._print(f"trial {trial.trial_id} done")

        def on_trial_error(self, iteration, trials, trial, **info):
            where = getattr(trial, "path", None) or getattr(trial, "local_path", None) or "the sweep folder"
            self._print(f"trial {trial.trial_id} failed (its error: {where})")

        def _print(self, line: str) -> None:
            print(line, file=out or sys.stderr, flush=True)

    return TrialLines()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
