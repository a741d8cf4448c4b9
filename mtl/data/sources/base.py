"""The source registry: what `mtl prepare` knows how to read, each dataset a `Source` registered by its module.

A source module (any public module of mtl.data.sources, found on the registry's first read) defines two functions
and registers them at its bottom with `SOURCES.add(name, Source(...))`, so `mtl prepare` can fan work out over Ray:
  discover(root: Path) -> list[WorkUnit]         cheap listing of independent units (a video, a chunk of a list file)
  read(unit: WorkUnit) -> Iterator[FrameRecord]  the unit's frames in a deterministic order
Readers raise mtl.labels.DataError naming file and line for malformed or out-of-range annotations. They do not
decode images (AFEW-VA reads one image header per clip for its size): prepare checks that each image exists and
decodes, and counts the skips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from mtl.labels import FrameRecord
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
    one video). `discover` and `read` must be importable functions: Ray workers unpickle them."""

    name: str
    flag: str
    help: str
    discover: Callable[[Path], list[WorkUnit]]
    read: Callable[[WorkUnit], Iterator[FrameRecord]]
    videos: bool = False


SOURCES: Registry[Source] = Registry("source", discover="mtl.data.sources")
