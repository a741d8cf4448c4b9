"""Registry: names to entries, one-line errors naming the key, discovery of a package's modules."""

import pytest

from mtl.errors import ConfigError
from mtl.registry import Registry


def test_entries_are_registered_by_decorator_or_add_and_looked_up_by_name():
    things = Registry("thing")

    @things.register()
    def first():
        return 1

    things.add("second", 2)
    assert things.names() == ("first", "second") and things.get("first") is first and "second" in things
    with pytest.raises(ValueError, match="registered twice"):
        things.add("second", 3)
    with pytest.raises(ConfigError, match=r"config key 'x.y': unknown thing 'third'; known: first, second"):
        things.get("third", key="x.y")
    with pytest.raises(ConfigError, match=r"^--kind: unknown thing 'third'; known"):  # a command-line option
        things.get("third", key="--kind")


def test_temporarily_registers_for_a_with_block_only():
    things = Registry("thing")
    with things.temporarily("toy", object()):
        assert "toy" in things
    assert "toy" not in things


def test_discovery_imports_every_public_module_of_the_package_once():
    from mtl.data.sources.base import SOURCES

    assert {"affwild2", "expw", "afew_va", "disfa"} <= set(SOURCES.names())
    assert all(source.name == name for name, source in SOURCES.items())
