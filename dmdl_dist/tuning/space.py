"""Search spaces as data: a YAML file maps dotted config keys to distributions (tune/*.yaml).

Parsing is pure (no Ray): `parse_space` checks the file's shape, `check_space` applies every value
a distribution can produce to the base config through `apply_overrides`, the same function the
CLI's --set uses, so an unknown key or a wrongly typed range fails before anything launches, and
`param_space` turns the distributions into Ray Tune's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dmdl_dist.config import Config, ConfigError, apply_overrides, validate

# name -> number of arguments (None: a non-empty list of values)
DISTRIBUTIONS: dict[str, int | None] = {
    "choice": None,
    "grid": None,
    "uniform": 2,
    "loguniform": 2,
    "quniform": 3,
    "randint": 2,  # [lower, upper), as Ray's tune.randint
}
TOP_LEVEL = ("space", "metric", "mode", "base")


@dataclass(frozen=True)
class Dist:
    """One distribution: `kind` is a key of DISTRIBUTIONS, `args` its list."""

    kind: str
    args: tuple

    def candidates(self) -> list:
        """Values this distribution can produce that reach every edge: all of a list, both bounds of a range.

        The bounds have the type the sampler returns (floats for uniform/loguniform/quniform, ints
        for randint), so an int key given a float range fails here rather than in a trial.
        """
        if self.kind in ("choice", "grid"):
            return list(self.args)
        lo, hi = self.args[0], self.args[1]
        if self.kind == "randint":
            return [int(lo), int(hi) - 1]
        return [float(lo), float(hi)]


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space file."""

    params: dict[str, Dist | Any]  # dotted key -> Dist, or a constant
    source: str = "<dict>"
    metric: str = "val_mAP"
    mode: str = "max"
    base_preset: str | None = None
    base_overrides: dict[str, Any] = field(default_factory=dict)

    def to_spec(self) -> dict:
        """The file's content, normalised: what a resumed sweep compares against."""
        space = {k: {v.kind: list(v.args)} if isinstance(v, Dist) else v for k, v in self.params.items()}
        base = {"preset": self.base_preset, "set": dict(self.base_overrides)}
        return {"metric": self.metric, "mode": self.mode, "base": base, "space": space}


def _err(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}")


def _number(a: Any) -> Any:
    """YAML 1.1 reads 1e-4 (no dot) as a string; a range bound that reads as a number is one."""
    if isinstance(a, str):
        try:
            return float(a)
        except ValueError:
            return a
    return a


def _parse_dist(key: str, value: Any, source: str) -> Dist | Any:
    if not isinstance(value, dict):
        return value  # a constant for every trial
    if len(value) != 1:
        raise _err(source, f"'{key}' must name exactly one distribution ({', '.join(DISTRIBUTIONS)}), got {value}")
    (kind, args), = value.items()
    if kind not in DISTRIBUTIONS:
        raise _err(source, f"'{key}' has unknown distribution '{kind}'; known: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise _err(source, f"'{key}': {kind} takes a non-empty list, got {args!r}")
    arity = DISTRIBUTIONS[kind]
    if arity is None:
        return Dist(kind, tuple(args))
    args = [_number(a) for a in args]
    if len(args) != arity or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise _err(source, f"'{key}': {kind} takes {arity} numbers, got {args!r}")
    lo, hi = args[0], args[1]
    if not lo < hi:
        raise _err(source, f"'{key}': {kind} needs lower < upper, got {args!r}")
    if kind == "loguniform" and lo <= 0:
        raise _err(source, f"'{key}': loguniform needs a positive lower bound, got {lo}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise _err(source, f"'{key}': randint takes integers [lower, upper), got {args!r}")
    if kind == "quniform" and not args[2] > 0:
        raise _err(source, f"'{key}': quniform's step must be positive, got {args[2]}")
    return Dist(kind, tuple(args))


def parse_space(spec: dict, source: str = "<dict>") -> SearchSpace:
    """Checks a search-space mapping's shape (not yet its keys: see `check_space`)."""
    if not isinstance(spec, dict):
        raise _err(source, "a search-space file holds a mapping at the top level")
    unknown = sorted(set(spec) - set(TOP_LEVEL))
    if unknown:
        raise _err(source, f"unknown top-level key(s) {unknown}; known: {', '.join(TOP_LEVEL)}")
    space = spec.get("space")
    if not isinstance(space, dict) or not space:
        raise _err(source, "'space' must map dotted config keys to distributions, e.g. cai.weight: {uniform: [0.1, 1]}")
    mode = spec.get("mode", "max")
    if mode not in ("max", "min"):
        raise _err(source, f"'mode' must be max or min, got {mode!r}")
    metric = spec.get("metric", "val_mAP")
    if not isinstance(metric, str):
        raise _err(source, f"'metric' must be a reported metric name such as val_mAP, got {metric!r}")
    base = spec.get("base") or {}
    if isinstance(base, str):
        base = {"preset": base}
    if not isinstance(base, dict) or set(base) - {"preset", "set"}:
        raise _err(source, f"'base' is a preset name or a mapping with 'preset' and 'set', got {base!r}")
    overrides = base.get("set") or {}
    if not isinstance(overrides, dict):
        raise _err(source, f"'base.set' maps dotted config keys to values, got {overrides!r}")
    params = {str(k): _parse_dist(str(k), v, source) for k, v in space.items()}
    clash = sorted(set(params) & set(overrides))
    if clash:
        raise _err(source, f"key(s) {clash} are both searched and fixed in base.set")
    return SearchSpace(params, source, metric, mode, base.get("preset"), dict(overrides))


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search-space file {path} does not exist")
    return parse_space(yaml.safe_load(path.read_text()), str(path))


def check_space(space: SearchSpace, base: Config) -> None:
    """Applies every edge value of every distribution, one at a time, to a copy of `base`.

    Raises ConfigError naming the key and the file: an unknown key, a value of the wrong type
    (e.g. a float range on an int key), or a value `validate` rejects (cluster.eps outside (0, 1)).
    """
    for key, dist in space.params.items():
        values = dist.candidates() if isinstance(dist, Dist) else [dist]
        for value in values:
            cfg = copy.deepcopy(base)
            try:
                apply_overrides(cfg, {key: value})
                validate(cfg)
            except ConfigError as err:
                raise _err(space.source, f"'{key}' = {value!r}: {err}") from None


def param_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune's param_space: the same dotted keys, with tune.* domains as values."""
    from ray import tune

    def domain(d: Dist | Any) -> Any:
        if not isinstance(d, Dist):
            return d
        a = d.args
        return {
            "choice": lambda: tune.choice(list(a)),
            "grid": lambda: tune.grid_search(list(a)),
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "quniform": lambda: tune.quniform(a[0], a[1], a[2]),
            "randint": lambda: tune.randint(a[0], a[1]),
        }[d.kind]()

    return {key: domain(d) for key, d in space.params.items()}


def grid_size(space: SearchSpace) -> int:
    """Trials per sample: the product of the grid lengths (Tune repeats the grid num_samples times)."""
    return math.prod(len(d.args) for d in space.params.values() if isinstance(d, Dist) and d.kind == "grid")
