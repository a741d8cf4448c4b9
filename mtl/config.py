"""Typed experiment config: one YAML file declares a whole run; `key=value` overrides adjust it.

`load_config("demo", ["train.lr=3e-4"])` reads a packaged preset (or a YAML path, with `extends:`), applies dotted-key
overrides and validates everything; `updated` and `overridden` give typed copies with keys changed. Unknown keys
and wrong types raise ConfigError naming the dotted key. The sections and their keys are `mtl.config_schema`'s,
imported from here.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mtl.config_schema import (DOWNSAMPLE_PERIOD, AugmentConfig, Config, DataConfig, DistillConfig,  # noqa: F401
                               DownsampleConfig, EnsembleConfig, EvalConfig, LossConfig, ModelConfig, PrepareConfig,
                               RunConfig, RuntimeConfig, StudentsConfig, TrainConfig, TuneConfig)
from mtl.errors import ConfigError
from mtl.storage import absolute


PRESETS = ("demo", "paper", "abaw3")


def preset_path(name: str) -> Path:
    return Path(str(resources.files("mtl.configs").joinpath(f"{name}.yaml")))


def read_yaml(source: str, seen: tuple[str, ...] = ()) -> dict:
    """A packaged preset name or a YAML file path -> dict. A top-level `extends: NAME_OR_PATH` starts from that
    config and overrides it key by key (nested sections merged)."""
    path = preset_path(source) if source in PRESETS else Path(source)
    if not path.is_file():
        raise ConfigError(f"config {source!r}: no such file (packaged presets: {', '.join(PRESETS)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends {base!r}: expected a preset name or a path")
    if base not in PRESETS:
        base = str((path.parent / base).resolve())  # relative to the file that names it
    here = str(path.resolve())
    if base in (*seen, here):
        raise ConfigError(f"{path}: extends {base!r}: a cycle")
    return merged(read_yaml(base, (*seen, here)), data)


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied: nested mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(data: dict, override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, booleans, null, lists)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key=value")
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {key!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw


def validate(data: dict) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"config key {key!r}: unknown key") from None
        got = "" if isinstance(first.get("input"), dict) else f" (got {first.get('input')!r})"  # a section's rule
        raise ConfigError(f"config key {key!r}: {first['msg']}{got}") from None


def load_config(source: str = "demo", overrides: list[str] | tuple[str, ...] = (), absolute: bool = True) -> Config:
    """A preset or YAML file with dotted `overrides`, validated; with `absolute`, its local paths made absolute
    against this process's working directory (`absolute_paths`)."""
    return with_overrides(read_yaml(source), overrides, absolute)


def with_overrides(data: dict, overrides: list[str] | tuple[str, ...], absolute: bool = True) -> Config:
    """Config dict `data` (changed in place) with dotted `overrides` applied, validated, and with `absolute` its
    local paths made absolute (`absolute_paths`)."""
    for override in overrides:
        apply_override(data, override)
    cfg = validate(data)
    return absolute_paths(cfg) if absolute else cfg


PATH_KEYS = ("run.dir", "data.shards", "model.weights", "distill.teacher", "distill.soft_labels", "runtime.local_dir")


def absolute_paths(cfg: Config) -> Config:
    """`cfg` with the local paths of PATH_KEYS absolute, resolved against this process's working directory, so
    that a relative path means the same in every Ray worker (whose working directory is another); URIs, `pipe:`
    and http(s) locations and unset keys stay as they are. Idempotent."""
    changes = {}
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value and not os.path.isabs(value) and absolute(value) != value:  # storage's rule: URIs stay
            changes[dotted] = absolute(os.path.expanduser(value))
    return updated(cfg, changes) if changes else cfg


def updated(cfg: Config, changes: dict[str, Any]) -> Config:
    """A copy of `cfg` with dotted keys set, e.g. updated(cfg, {"train.role": "student"}); each value is
    validated as it is assigned (no round trip through a dict)."""
    cfg = cfg.model_copy(deep=True)
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        node = cfg
        try:
            for section in sections:
                node = getattr(node, section)
            if key not in type(node).model_fields:
                raise AttributeError(key)
            setattr(node, key, value)
        except AttributeError:
            raise ConfigError(f"config key {dotted!r}: unknown key") from None
        except ValidationError as err:
            raise ConfigError(f"config key {dotted!r}: {err.errors()[0]['msg']} (got {value!r})") from None
    return cfg


def overridden(cfg: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """`cfg` with dotted `key=value` overrides applied as `load_config` applies them (validated, paths absolute)."""
    return with_overrides(config_dict(cfg), overrides)


def config_dict(cfg: Config) -> dict[str, Any]:
    """Plain-data form of a config (what a run records next to its outputs)."""
    return cfg.model_dump(mode="json")
