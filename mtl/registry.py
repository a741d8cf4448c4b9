"""Named registries (timm-style): dataset sources, balancers, objectives, backbones and pipeline stages.

A registry maps a name to an object (a class, a function or a small spec). Modules register what they define with
the `register` decorator or `add`; a registry built with `discover="mtl.some.package"` imports every public module
of that package the first time it is read, so a new entry is one new module and nothing else to edit:

    BALANCERS = Registry("balancer", discover="mtl.data.balancers")

    @BALANCERS.register("paper")
    class PaperBalancer: ...

    BALANCERS.get("paper", key="data.balance")   # unknown names raise ConfigError naming the key and the choices
"""

from __future__ import annotations

import importlib
import pkgutil
from contextlib import contextmanager
from typing import Callable, Generic, Iterator, Optional, TypeVar

from mtl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, discover: Optional[str] = None):
        self.kind = kind
        self._discover = discover
        self._entries: dict[str, T] = {}
        self._discovered = discover is None

    def _load(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self._discover)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self._discover}.{module.name}")

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        if name in self._entries and not replace and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        """Decorator: register a class or function under `name` (default: its __name__)."""
        def decorate(entry: T) -> T:
            return self.add(name or entry.__name__, entry)
        return decorate

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    @contextmanager
    def temporarily(self, name: str, entry: T) -> Iterator[T]:
        """Register `entry` for the duration of a with-block (tests, plugins tried once)."""
        self._load()
        self.add(name, entry)
        try:
            yield entry
        finally:
            self.remove(name)

    def get(self, name: str, key: Optional[str] = None) -> T:
        self._load()
        if name not in self._entries:
            where = (f"{key}: " if key.startswith("-") else f"config key {key!r}: ") if key else ""  # option or key
            raise ConfigError(f"{where}unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
