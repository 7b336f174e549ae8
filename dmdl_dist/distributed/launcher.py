"""Runs the per-worker training function on a Ray Train TorchTrainer (Ray 2.60, Train V2 API).

A cluster is joined only when the user names one (`--address`, dist.address or RAY_ADDRESS);
otherwise `connect` starts a private one on this machine, listening on 127.0.0.1 (dist.bind).
Ray's token authentication stays as Ray sets it (on by default); only tests turn it off.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dmdl_dist import logs
from dmdl_dist.config import Config, from_dict, to_dict, total_epochs
from dmdl_dist.distributed.raytrainer import trainer_class
from dmdl_dist.errors import DmdlError

log = logging.getLogger("dmdl_dist")

# Ray resolves a node address of 127.0.0.1 to the machine's outward address unless it runs as a
# single-machine Ray ("clusters" off); its servers then bind the loopback address (seen: gcs_server,
# raylet, driver and workers on 127.0.0.1:port instead of *:port). The switch is read when ray is imported.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray Train's preemption watcher polls node draining, which a private single-machine cluster never does.
PRIVATE_CLUSTER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
PEER_LOST = ("Connection closed by peer", "Connection reset by peer")  # gloo's words for a dead peer


def _worker(loop_config: dict) -> None:
    """Inside each Ray worker: the same `train` as local mode, with Ray's session."""
    import ray.train

    from dmdl_dist.distributed import comm
    from dmdl_dist.distributed.session import RaySession
    from dmdl_dist.engine.trainer import silent, train

    cfg = from_dict(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    if cfg.dist.backend == "deepspeed":
        import deepspeed  # noqa: F401  (now, so that route_worker hands its logger to the run's log file)
    logs.route_worker(run_dir / logs.FOLDER, ray.train.get_context().get_world_rank(),
                      verbose=loop_config.get("verbose", False), explained=explained_by_driver)
    session = RaySession(run_dir)
    # The driver prints the epoch lines (distributed/progress.py) and the results table; workers stay quiet.
    # What libraries print (DeepSpeed: "... built successfully") is INFO of 'stdout': the log file's.
    with contextlib.redirect_stdout(logs.LineLogger(logging.getLogger("stdout"))):
        results = train(cfg, run_dir, progress=False, echo=silent, session=session)
    if comm.is_main() and cfg.run.report and "test" in results:
        from dmdl_dist.report.report import write_report  # on rank 0's node, where the test set is

        write_report(run_dir)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_interface() -> str:
    """The name of the network interface holding 127.0.0.1 ('lo' on Linux, 'lo0' on macOS)."""
    import psutil  # a dependency of Ray

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == "127.0.0.1" for a in addresses):
            return name
    return "lo"


def connect(address: str | None = None, *, bind: str = "127.0.0.1", num_cpus: int | None = None) -> str:
    """Joins the cluster the user named, else starts a private local one; returns which, in words.

    `address` (--address or dist.address), else RAY_ADDRESS: "auto" (the cluster running on this
    machine) or HOST:PORT. Without either, ray.init(address="local") starts our own cluster whose
    servers listen on `bind`: a loopback address keeps them on this machine; any other address is
    advertised to other machines and Ray 2.60 then listens on every interface.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None and is_loopback(bind):
        os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
        _single_machine_if_imported()
    import ray

    logs.adopt("ray")  # Ray's driver-side records go through our routing: errors on the console, all in the log
    if ray.is_initialized():
        return f"Ray at {ray.get_runtime_context().gcs_address}"
    if address is not None:
        ray.init(address=address)
        return f"joined Ray at {ray.get_runtime_context().gcs_address}"
    node_ip = None if is_loopback(bind) or bind in ("0.0.0.0", "::", "*") else bind
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address=node_ip,
             runtime_env={"env_vars": PRIVATE_CLUSTER_ENV})
    where = ray.util.get_node_ip_address()
    if is_loopback(bind) and not is_loopback(where):
        log.warning(
            "the private Ray cluster listens on %s, not only on %s: %s=0 was not in effect when Ray started; "
            "Ray's token authentication guards it (keep RAY_AUTH_MODE unset)", where, bind, SINGLE_MACHINE_ENV)
    return f"private Ray on {where}"


def _single_machine_if_imported() -> None:
    """SINGLE_MACHINE_ENV is read once, when Ray's constants are imported; a process that imported Ray
    before (a test, a notebook) gets the same switch set where Ray keeps it."""
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ.get(SINGLE_MACHINE_ENV) == "0":
        constants.ENABLE_RAY_CLUSTER = False


def make_trainer(
    cfg: Config,
    run_dir: str | Path,
    *,
    name: str | None = None,
    storage_path: str | None = None,
    callbacks: Sequence = (),
    verbose: bool = False,
):
    """The TorchTrainer of one run, not yet fitted (Tune's driver functions build theirs here too).

    Checkpoints go to Ray storage under <storage_path>/<name> (defaults: cfg.dist.storage_path or
    the run folder's parent, and the run folder's name, so they land in the run folder); fitting
    a trainer with the same name and storage path again resumes from its latest checkpoint, and
    FailureConfig restarts the worker group after a worker dies, at most dist.max_failures times.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    run_dir = Path(run_dir).resolve()
    d = cfg.dist
    resources = {"CPU": d.cpus_per_worker}
    if d.gpus_per_worker > 0:
        resources["GPU"] = d.gpus_per_worker
    # Ray Train's print patch logs a worker's prints and also copies them to the console; _worker logs them
    env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if not verbose:
        env["TQDM_DISABLE"] = "1"  # a worker's progress bar reaches the console one redraw per line
    if d.backend == "deepspeed" and d.gpus_per_worker == 0:
        env["DS_ACCELERATOR"] = "cpu"  # said, not detected: no "Setting accelerator to CPU" warning
    if is_loopback(ray.util.get_node_ip_address()):
        env["GLOO_SOCKET_IFNAME"] = loopback_interface()  # a loopback cluster is one machine: so is gloo
    return trainer_class()(
        _worker,
        train_loop_config={"config": to_dict(cfg), "run_dir": str(run_dir), "verbose": verbose},
        scaling_config=ScalingConfig(num_workers=d.workers, use_gpu=d.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(timeout_s=3600),  # a long clustering refresh must not time out the others
        run_config=RunConfig(
            name=name or run_dir.name,
            storage_path=storage_path or d.storage_path or str(run_dir.parent),
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": env},
            # Ray Train's own lines on the console: its errors (a worker's traceback among them); all in its logs
            logging_config=LoggingConfig(log_level="INFO" if verbose else "ERROR"),
        ),
    )


class WorkerLost(DmdlError):
    """A worker's process or node went away and no restart was left: the run can be resumed."""

    exit_code = 1  # not the user's input: the run stopped


def launch(cfg: Config, run_dir: str | Path, *, progress: bool = True, verbose: bool = False,
           address: str | None = None, echo=None):
    """Trains with cfg.dist.workers Ray workers; returns Ray's Result (the same run name resumes).

    Prints one start line; the driver then prints one line per epoch and per worker-group restart.
    A run that fails raises the DmdlError a worker raised, WorkerLost when a worker died with no
    restart left, or else Ray's TrainingFailedError (a bug: its message holds the workers' tracebacks).
    """
    from dmdl_dist.distributed.progress import RunConsole

    echo = echo or functools.partial(print, file=sys.stderr, flush=True)
    run_dir = Path(run_dir)
    with logs.log_file(run_dir / logs.FOLDER, "driver") as log_path:
        address = address or cfg.dist.address
        where = connect(address, bind=cfg.dist.bind)
        d = cfg.dist
        device = f"{d.gpus_per_worker:g} GPU" if d.gpus_per_worker > 0 else f"cpu, {d.cpus_per_worker:g} CPU"
        echo(f"{d.workers} Ray workers ({device} each), {d.backend}, {d.precision}, {where} -> {run_dir} "
             f"(log: {log_path.parent}/)")
        from dmdl_dist.engine.trainer import degenerate_warning

        console = RunConsole(total_epochs(cfg), d.max_failures, show_epochs=progress,
                             warning=lambda epoch, problems: degenerate_warning(epoch, problems, cfg))
        trainer = make_trainer(cfg, run_dir, callbacks=[console.callback()], verbose=verbose)
        logs.adopt_libraries()  # torch, imported by now, logs through its own stderr handler
        with console:
            try:
                return trainer.fit()
            except Exception as err:
                failure = run_failure(err, run_dir, last_epoch=console.last_epoch, max_failures=d.max_failures,
                                      address=address)
                if failure is err:
                    raise
                raise failure from err


def run_failure(err: BaseException, run_dir: Path, *, last_epoch: int, max_failures: int,
                address: str | None = None) -> BaseException:
    """What a failed fit() means to the person who started it: their error, a lost worker, or a bug (err)."""
    from dmdl_dist.distributed.progress import worker_died

    user = unwrap_user_error(err)
    if user is not None:
        return user
    lost = sorted(rank for rank, e in getattr(err, "worker_failures", {}).items() if worker_died(e))
    if not lost:
        return err
    last_epoch = max(last_epoch, _saved_epoch(run_dir))  # a kill can beat Ray's registration of a report
    resume = f"dmdl train --resume {run_dir}" + (f" --address {address}" if address else "")
    restarts = f"after {max_failures} restart{'s' * (max_failures != 1)} of the worker group (dist.max_failures)"
    checkpoint = f"the last checkpointed epoch is {last_epoch}" if last_epoch else "no epoch was checkpointed"
    return WorkerLost(
        f"Ray worker {', '.join(map(str, lost))} died in epoch {last_epoch + 1} (its process was killed, ran out "
        f"of memory, or its node was lost) {restarts}; {checkpoint}. Continue the run with:\n  {resume}\n"
        f"Logs: {run_dir / logs.FOLDER}/ and Ray's session logs (/tmp/ray/session_latest/logs on each node).")


def _saved_epoch(run_dir: Path) -> int:
    """The epoch of the run folder's last.pt, where the driver sees it (rank 0 on its node, or shared)."""
    from dmdl_dist.distributed.session import epoch_of
    from dmdl_dist.engine import checkpoint as ckpt

    try:
        return max(0, epoch_of(ckpt.load(run_dir / ckpt.LAST, map_location="cpu")))
    except Exception:  # absent or unreadable: the message then counts Ray's registered epochs only
        return 0


def explained_by_driver(err: BaseException) -> bool:
    """Errors the driver sums up in one paragraph, so a worker's traceback of them goes to its log file only:
    a DmdlError, and a collective that failed because a peer worker died (the driver names the dead one)."""
    if unwrap_user_error(err) is not None:
        return True
    import torch.distributed as dist

    if isinstance(err, dist.DistNetworkError):
        return True
    # gloo raises a plain RuntimeError when the other end of a pair goes away
    return isinstance(err, RuntimeError) and any(s in str(err) for s in PEER_LOST)


def unwrap_user_error(err: BaseException | None) -> DmdlError | None:
    """The DmdlError inside Ray's wrappers (WorkerGroupError, ControllerError, RayTaskError, TuneError), if any."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DmdlError):
            return e
        todo += list(getattr(e, "worker_failures", {}).values())  # ray.train.WorkerGroupError
        # not __context__: a bug raised while a DmdlError was being handled is still a bug
        todo += [getattr(e, "controller_failure", None), getattr(e, "cause", None), e.__cause__,
                 getattr(e, "_base_exc", None)]  # Ray Train's UserExceptionWithTraceback
    return None
