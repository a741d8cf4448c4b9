"""Options and output helpers shared by the subcommands.

A command that runs a stage takes `--config` (a preset or YAML file) and dotted `key=value` overrides; each of its
other flags is either an alias that sets one config key (`key_option`: its help says which) or names an input or an
output (`path_option`). `config_overrides` turns the aliases given on a command line into overrides, applied
before the dotted ones (so a dotted override, the canonical spelling, wins)."""

from __future__ import annotations

import json
from typing import Any, Optional

import click
import yaml

address_option = click.option("--address", default=None, envvar="RAY_ADDRESS",
                              help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray).")


config_option = click.option("--config", "config_source", default="demo", show_default=True,
                             help="Config file, or a packaged preset name (demo, paper).")


class KeyOption(click.Option):
    """A flag that sets config key `config_key` (with `key_value` for a flag that has no value of its own)."""

    def __init__(self, *decls, config_key: str, key_value: Any = None, **attrs):
        attrs["help"] = f"{attrs.get('help', '').rstrip()} [sets {config_key}"
        attrs["help"] += f"={key_value}]" if key_value is not None else "]"
        super().__init__(*decls, **attrs)
        self.config_key, self.key_value = config_key, key_value


class PathOption(click.Option):
    """A flag that names an input (`role="input"`) or an output (`role="output"`) of the command."""

    def __init__(self, *decls, role: str, **attrs):
        if role not in ("input", "output"):
            raise ValueError(f"role {role!r}: input or output")
        super().__init__(*decls, **attrs)
        self.role = role


def key_option(*decls, key: str, value: Any = None, **attrs):
    """click.option for a flag that sets config key `key` (to `value` when given, for a plain flag)."""
    return click.option(*decls, cls=KeyOption, config_key=key, key_value=value, **attrs)


def path_option(*decls, role: str, **attrs):
    """click.option for a flag naming an input or an output (`role`)."""
    return click.option(*decls, cls=PathOption, role=role, **attrs)


def yaml_value(value: Any) -> str:
    """The override text of a flag's value: booleans as YAML's true/false; a text that YAML would read as another
    value (`2024`, `on`, `a: b`) quoted, so that a path flag gives its path."""
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    if isinstance(value, str):
        try:
            if yaml.safe_load(text) != value:
                return json.dumps(value)
        except yaml.YAMLError:
            pass
    return text


def config_overrides(params: dict, overrides: tuple = (), command: Optional[click.Command] = None) -> list[str]:
    """The dotted overrides of the key options given on the command line (those not None; a plain flag only when
    set), followed by `overrides`."""
    command = command or click.get_current_context().command
    aliases = []
    for param in command.params:
        if not isinstance(param, KeyOption) or params.get(param.name) is None:
            continue
        value = params[param.name]
        if param.key_value is not None:
            if not value:
                continue
            value = param.key_value
        aliases.append(f"{param.config_key}={yaml_value(value)}")
    return [*aliases, *overrides]


def config_of(config_source: Optional[str], model_file: str, overrides: list[str]):
    """The config a command on model files runs with: `--config` when given, else the model file's own (what it
    was trained with) less its runtime section (the training machine's settings: a model trained on CUDA is
    evaluated where the local machine says, runtime.device auto), with the overrides applied."""
    from mtl.checkpoint import read_model_file
    from mtl.config import RuntimeConfig, load_config, overridden, validate

    if config_source:
        return load_config(config_source, overrides)
    trained = validate(read_model_file(model_file)["config"])
    return overridden(trained.model_copy(update={"runtime": RuntimeConfig()}), overrides)


def format_mapping(mapping: dict, indent: int = 0) -> str:
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(format_mapping(value, indent + 2))
        else:
            lines.append(" " * indent + f"{key}: {value}")
    return "\n".join(lines)
