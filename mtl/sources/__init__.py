"""Dataset readers: each source module turns a raw dataset folder into FrameRecords.

Every reader module exposes two functions, so `mtl prepare` can fan work out over a Ray cluster:
  discover(root: Path) -> list[WorkUnit]      cheap listing of independent units (a video, a chunk of a list file)
  read(unit: WorkUnit) -> Iterator[FrameRecord]  the unit's frames in a deterministic order
Readers raise mtl.labels.DataError naming file and line for malformed or out-of-range annotations. They do not
decode images (AFEW-VA reads one image header per clip for its size): prepare checks that each image exists and
decodes, and counts the skips.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

SOURCES = ("affwild2", "expw", "afew_va", "disfa")


@dataclass(frozen=True)
class WorkUnit:
    """An independent piece of a dataset: `source` names the reader, `name` is shown in progress and errors,
    `args` is whatever the reader needs to read it (picklable)."""

    source: str
    name: str
    args: tuple


def reader(source: str) -> ModuleType:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    return importlib.import_module(f"mtl.sources.{source}")
