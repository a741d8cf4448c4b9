"""Search spaces of `mtl tune`: a small YAML grammar mapped to Ray Tune's distributions.

A space file (`tune/NAME.yaml`) holds two mappings of dotted config keys:

    fixed:                      # config overrides every trial gets (optional)
      train.role: student
    search:                     # key -> one distribution
      distill.temperature: {loguniform: [1.0, 8.0]}
      distill.alpha: {uniform: [0.0, 1.0]}
      train.batch_size: {choice: [16, 32]}
      loss.lambda_au: {grid: [1, 4, 8]}
      model.rnn_hidden: {randint: [32, 129]}     # integers in [low, high)

`load_space` parses a file; `Space.fix` sets its fixed keys on a config; `check_space` proves every key and every
value the distributions can draw against a config, so a bad space fails before any trial starts, with a ConfigError
naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtl.config import Config, read_yaml, updated
from mtl.errors import ConfigError

KINDS = ("uniform", "loguniform", "choice", "grid", "randint")
NOT_SEARCHABLE = ("run.", "tune.", "train.name", "data.shards")  # the search manages these itself
NOT_FIXABLE = ("run.", "train.name")


@dataclass(frozen=True)
class Param:
    """One searched key: `kind` in KINDS and its arguments ([low, high] or the list of values)."""

    key: str
    kind: str
    args: tuple

    def corners(self) -> list:
        """Values that together prove every value this distribution can draw is a valid config value."""
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)

    def to_tune(self):
        from ray import tune

        low_high = self.args
        return {"uniform": lambda: tune.uniform(*low_high), "loguniform": lambda: tune.loguniform(*low_high),
                "randint": lambda: tune.randint(*low_high), "choice": lambda: tune.choice(list(self.args)),
                "grid": lambda: tune.grid_search(list(self.args))}[self.kind]()


@dataclass(frozen=True)
class Space:
    path: str
    params: tuple[Param, ...]
    fixed: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def to_tune(self) -> dict:
        """{dotted key: Ray Tune domain or grid_search} for Tune's param_space."""
        return {p.key: p.to_tune() for p in self.params}

    def apply(self, cfg: Config, values: dict) -> Config:
        """A copy of `cfg` with `values` ({dotted key: value}, numpy scalars too) set and validated."""
        return updated(cfg, {key: python_value(value) for key, value in values.items()})

    def fix(self, cfg: Config) -> Config:
        """`cfg` with the space's fixed keys set (ConfigError names the space file)."""
        try:
            return self.apply(cfg, self.fixed)
        except ConfigError as err:
            raise ConfigError(f"{self.path}: fixed: {err}") from None


def python_value(value: Any) -> Any:
    """A numpy scalar (what Tune's samplers give) as the Python number it holds; anything else as it is."""
    return value.item() if hasattr(value, "item") else value


def load_space(path: str | Path) -> Space:
    """Parse a space file (grammar in the module docstring); ConfigError names the file and key at fault."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {str(path)!r}: no such file (spaces live in tune/, e.g. tune/distill.yaml)")
    raw = read_yaml(str(path))
    if set(raw) - {"fixed", "search"} or not isinstance(raw.get("search"), dict):
        raise ConfigError(f"{path}: expected the mappings 'search' (key -> distribution) and optionally 'fixed'")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: 'fixed' must map dotted config keys to values")
    for key in fixed:
        if str(key).startswith(NOT_FIXABLE):
            raise ConfigError(f"{path}: key {key!r}: set by the search itself, cannot be fixed")
    params = tuple(parse_param(path, str(key), spec) for key, spec in raw["search"].items())
    if not params:
        raise ConfigError(f"{path}: 'search' names no key")
    return Space(str(path), params, {str(k): v for k, v in fixed.items()})


def parse_param(path: Path, key: str, spec: Any) -> Param:
    where = f"{path}: key {key!r}"
    if key.startswith(NOT_SEARCHABLE):
        raise ConfigError(f"{where}: set by the search itself, cannot be searched")
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
        raise ConfigError(f"{where}: expected one of {{{', '.join(f'{k}: [...]' for k in KINDS)}}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} needs a list, got {args!r}")
    if kind in ("choice", "grid"):
        return Param(key, kind, tuple(args))
    if len(args) != 2:
        raise ConfigError(f"{where}: {kind} needs [low, high], got {args!r}")
    low, high = (number(where, kind, a) for a in args)
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: randint needs integer bounds, got {args!r}")
    if not low < high or (kind == "loguniform" and low <= 0) or not math.isfinite(high - low):
        rule = "0 < low < high" if kind == "loguniform" else "low < high"
        raise ConfigError(f"{where}: {kind} needs {rule}, got {args!r}")
    return Param(key, kind, (int(low), int(high)) if kind == "randint" else (low, high))


def number(where: str, kind: str, value: Any) -> float:
    """A bound as a float; YAML reads `1e-4` (no dot) as a string, which is accepted too."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {kind} bound {value!r} is not a number") from None


def check_space(space: Space, cfg: Config) -> None:
    """Raise ConfigError naming the space file and key when a key is unknown to `cfg` or a value the
    distribution can draw is invalid there."""
    for param in space.params:
        for value in param.corners():
            try:
                space.apply(cfg, {param.key: value})
            except ConfigError as err:
                raise ConfigError(f"{space.path}: {param.kind} of {param.key!r} (value {value!r}): {err}") from None
