"""The source registry: what `mtl prepare` knows how to read, each dataset a `Source` registered by its module.

A source module (any public module of mtl.data.sources, found on the registry's first read) defines two functions
and registers them at its bottom with `SOURCES.add(name, Source(...))`, so `mtl prepare` can fan work out over Ray:
  discover(root: Path) -> list[WorkUnit]         cheap listing of independent units (a video, a chunk of a list file)
  read(unit: WorkUnit) -> Iterator[FrameRecord]  the unit's frames in a deterministic order
Readers raise mtl.errors.DataError naming file and line for malformed or out-of-range annotations. They do not
decode images (AFEW-VA reads one image header per clip for its size): prepare checks that each image exists and
decodes, and counts the skips.

A reader whose labels depend on the label protocol (mtl.labels.Protocol: which AUs, which classes) names
"protocol" in `options`: `discover` then gets `protocol=<name>` and carries it in its units. `protocols` lists the
protocols a source exists under (None: all), `detect` tells from a root which protocol its labels are in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from mtl.errors import ConfigError
from mtl.labels import FrameRecord
from mtl.errors import DataError
from mtl.registry import Registry


@dataclass(frozen=True)
class WorkUnit:
    """An independent piece of a dataset: `source` names the reader, `name` is shown in progress and errors,
    `args` is whatever the reader needs to read it (picklable)."""

    source: str
    name: str
    args: tuple


@dataclass(frozen=True)
class Source:
    """A dataset `mtl prepare` reads: `flag` is its CLI option (e.g. "--afew-va") and `help` that option's help;
    `videos`: the temporal window loader windows its units by default (their frames must be consecutive frames of
    one video). `discover` and `read` must be importable functions: Ray workers unpickle them.

    `options`: keyword arguments `discover` takes besides the root ("protocol": the protocol's name, "images": an
    image folder outside the root); `protocols`: the protocols the source has labels under (None: any);
    `detect(root)`: the protocol the labels under root are in, None when the folder does not tell."""

    name: str
    flag: str
    help: str
    discover: Callable[[Path], list[WorkUnit]]
    read: Callable[[WorkUnit], Iterator[FrameRecord]]
    videos: bool = False
    options: tuple[str, ...] = ()
    protocols: Optional[tuple[str, ...]] = None
    detect: Optional[Callable[[Path], Optional[str]]] = None

    def check_protocol(self, protocol: str) -> None:
        """DataError (one line) when the source has no labels under `protocol`."""
        if self.protocols is not None and protocol not in self.protocols:
            raise DataError(f"source {self.name} ({self.flag}) exists only under protocol "
                            f"{' or '.join(self.protocols)}, not under {protocol}")

    def detected_protocol(self, root: Path) -> Optional[str]:
        """The protocol the labels under `root` are in, when the folder (or the source itself) tells; else None."""
        if self.detect is not None:
            return self.detect(Path(root))
        return self.protocols[0] if self.protocols is not None and len(self.protocols) == 1 else None

    def units(self, root: Path, protocol: str, **options) -> list[WorkUnit]:
        """`discover(root)` with the options it takes: the protocol, and those given (ConfigError if it takes one
        of them not)."""
        self.check_protocol(protocol)
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(f"source {self.name} takes no {', '.join(unknown)} option")
        if "protocol" in self.options:
            options["protocol"] = protocol
        return self.discover(Path(root), **options)


SOURCES: Registry[Source] = Registry("source", discover="mtl.data.sources")
