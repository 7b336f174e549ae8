"""How a sweep picks its trials' values: random draws (and grids), or Optuna's TPE (`--search optuna`).

Both read the same search-space files: Ray Tune's domains (space.param_space) are what
BasicVariantGenerator samples and what OptunaSearch converts to Optuna distributions. Optuna is
an optional extra, checked before anything launches.
"""

from __future__ import annotations

import importlib.util

from dmdl_dist.config import ConfigError
from dmdl_dist.errors import DmdlError
from dmdl_dist.tuning.space import Dist, SearchSpace

SEARCHES = ("random", "optuna")


class OptunaMissingError(DmdlError, ImportError):
    """--search optuna without the optuna package."""


def check_search(kind: str, space: SearchSpace) -> None:
    """Fails before launch: an unknown search, optuna not installed, or a grid (TPE draws, it does not enumerate)."""
    if kind not in SEARCHES:
        raise ConfigError(f"--search must be one of {', '.join(SEARCHES)}, got {kind!r}")
    if kind != "optuna":
        return
    if importlib.util.find_spec("optuna") is None:
        raise OptunaMissingError("--search optuna needs the optuna package, which is not installed: "
                                 "pip install 'dmdl-dist[optuna]' (or pip install optuna), or use --search random")
    grids = [k for k, d in space.params.items() if isinstance(d, Dist) and d.kind == "grid"]
    if grids:
        raise ConfigError(f"{space.source}: --search optuna draws every value, it cannot enumerate the grid of "
                          f"{', '.join(grids)}; write {{choice: [...]}} instead, or use --search random")


def make_search(kind: str, *, max_concurrent: int, seed: int):
    """Tune's search algorithm; metric and mode come from the TuneConfig, the space from the Tuner."""
    if kind == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=seed)
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # TPE proposes from the trials finished so far, so it is capped at max_concurrent like the random search.
    return ConcurrencyLimiter(OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed)),
                              max_concurrent=max_concurrent)
