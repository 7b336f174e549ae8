"""Ray Train's TorchTrainer with two of its defaults changed, each for a cause seen in Ray 2.60 (Train V2).

Both hook into Train V2 internals (`_create_default_callbacks`, `_initialize_and_run_controller`,
the failure-handling package); with a Ray that lacks them this module gives the plain TorchTrainer.

1. The placement-group cleaner is left out where the cluster has no State API. Train V2 starts it
   for every run: a detached actor that asks the State API once a second whether the Train
   controller is alive, to free the run's placement group if the controller died. The State API
   is served by the dashboard process, which a cluster started with include_dashboard=False (as
   `dmdl` starts its private one) or a minimal Ray install (no aiohttp) does not run; every query
   then fails, the cleaner logs "Failed to query Ray Train Controller actor state. State API may be
   temporarily unavailable" once a second (44 lines in a one-minute run), and it can never act. A
   private cluster's placement groups end with the cluster anyway.
2. A run whose worker raised a DmdlError (bad input, found only inside a worker) is not restarted:
   FailureConfig.max_failures counts every worker-group failure, and the same input fails the same
   way again. Other failures (a lost worker, a bug that may be transient) are restarted as before.
"""

from __future__ import annotations


def state_api_available() -> bool:
    """Whether the connected cluster answers Ray's State API."""
    import ray

    try:
        from ray.util.state import get_actor

        get_actor("0" * 32, address=ray.get_runtime_context().gcs_address, timeout=5)
    except Exception:  # ServerUnavailable, RayStateApiException, or no `requests`: no State API
        return False
    return True


def trainer_class():
    """The TorchTrainer class to instantiate (a subclass when Ray has the hooks)."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision
    except ImportError:
        return TorchTrainer

    from dmdl_dist.distributed.launcher import unwrap_user_error

    class UserErrorsRaise(DefaultFailurePolicy):
        def make_decision(self, training_failed_error):
            if unwrap_user_error(training_failed_error) is not None:
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if state_api_available():
                return callbacks
            return [c for c in callbacks if type(c).__name__ != "PlacementGroupCleanerCallback"]

        def _initialize_and_run_controller(self, **controller_init_kwargs):
            controller_init_kwargs["failure_policy"] = UserErrorsRaise(self.run_config.failure_config)
            return super()._initialize_and_run_controller(**controller_init_kwargs)

    return Trainer
