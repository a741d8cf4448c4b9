import importlib
import pkgutil

import pytest

import mtl.data.sources
from mtl.errors import ConfigError
from mtl.data.sources.base import SOURCES, Source

BUILT_IN = {"affwild2": "--affwild2", "expw": "--expw", "afew_va": "--afew-va", "disfa": "--disfa",
            "s_affwild2": "--s-affwild2"}


def test_discovery_finds_every_built_in_source_module_with_its_flag():
    modules = {m.name for m in pkgutil.iter_modules(mtl.data.sources.__path__) if not m.name.startswith("_")}
    assert modules - {"base"} == set(BUILT_IN)
    assert {name: source.flag for name, source in SOURCES.items()} == BUILT_IN
    for name, source in SOURCES.items():
        module = importlib.import_module(f"mtl.data.sources.{name}")
        assert source.name == name and (source.discover, source.read) == (module.discover, module.read)
    assert [name for name, source in SOURCES.items() if source.videos] == ["affwild2"]


def test_unknown_source_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown source 'nope'; known: .*affwild2"):
        SOURCES.get("nope")


def test_a_temporary_source_is_gone_after_the_block():
    toy = Source("toy", "--toy", "Toy root.", discover=list, read=iter)
    with SOURCES.temporarily("toy", toy):
        assert SOURCES.get("toy") is toy
    assert "toy" not in SOURCES
