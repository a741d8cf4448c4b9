"""Every command that runs a stage takes --config and dotted overrides; each of its other flags is an alias that
sets one config key (and sets it exactly as the override would) or names an input or an output."""

from __future__ import annotations

import click
from pydantic import BaseModel
import pytest

from mtl.cli import main
from mtl.commands.options import KeyOption, PathOption, config_overrides
from mtl.config import Config, load_config

STAGE_COMMANDS = ("train", "soft-labels", "tune", "pipeline", "ensemble", "evaluate", "prepare")
NOT_A_SETTING = {"address": "which Ray cluster runs it, not what runs", "help": "click's",
                 "verify": "mtl prepare's re-read of what it wrote (mtl check-shards), not what it writes"}


def config_keys(model=Config, prefix: str = "") -> set[str]:
    """Every dotted key of the config."""
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # a section
            keys |= config_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


KEYS = config_keys()


@pytest.mark.parametrize("name", STAGE_COMMANDS)
def test_a_stage_command_takes_a_config_overrides_and_only_flags_that_map(name):
    command = main.commands[name]
    params = {param.name: param for param in command.params}
    assert "config_source" in params and params["config_source"].opts == ["--config"]
    positional = [p for p in command.params if isinstance(p, click.Argument)]
    assert len(positional) == 1 and positional[0].nargs == -1  # KEY=VALUE overrides (ensemble: files too)
    for param in command.params:
        if isinstance(param, click.Argument) or param.name == "config_source" or param.name in NOT_A_SETTING:
            continue
        assert isinstance(param, (KeyOption, PathOption)), f"mtl {name} {param.opts[0]}: maps to nothing"
        if isinstance(param, KeyOption):
            assert param.config_key in KEYS, f"mtl {name} {param.opts[0]}: unknown key {param.config_key}"
            assert param.config_key in param.help  # --help says which key it sets


def test_the_config_keys_are_read_from_the_schema():
    assert {"runtime.device", "data.shards", "ensemble.format", "tune.space"} <= KEYS
    assert "train" not in KEYS and "train.use_gpu" not in KEYS


@pytest.mark.parametrize("name", STAGE_COMMANDS)
def test_each_alias_sets_its_key_as_the_override_does(name):
    command = main.commands[name]
    for param in command.params:
        if not isinstance(param, KeyOption):
            continue
        if param.key_value is not None:
            given, expected = True, param.key_value
        elif param.is_flag:
            given, expected = False, False
        elif isinstance(param.type, click.Choice):
            given = expected = param.type.choices[-1]
        elif isinstance(param.type, click.types.IntParamType):
            given = expected = max(7, getattr(param.type, "min", None) or 0)  # within an IntRange's bounds
        else:
            given = expected = "/somewhere/else"
        [override] = config_overrides({param.name: given}, (), command)
        section, key = param.config_key.split(".")
        assert getattr(getattr(load_config("demo", [override]), section), key) == expected
        # the dotted override, the canonical spelling, comes last and wins
        assert config_overrides({param.name: given}, ("x.y=1",), command)[-1] == "x.y=1"


def test_flags_left_unset_set_nothing():
    command = main.commands["ensemble"]
    unset = {param.name: (False if param.is_flag and param.key_value is not None else None)
             for param in command.params if isinstance(param, KeyOption)}
    assert config_overrides(unset, ("students.count=2",), command) == ["students.count=2"]


@pytest.mark.parametrize("text", ["2024", "on", "a: b", "null", "/data/shards", "s3://bucket/x y"])
def test_a_text_flag_value_reads_back_as_the_same_text(text):
    from mtl.commands.options import yaml_value

    assert load_config("demo", [f"train.name={yaml_value(text)}"]).train.name == text
