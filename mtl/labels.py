"""Label vocabulary, raw-file markers and the per-frame record that every dataset reader yields."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

TASKS = ("au", "expr", "va")
AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25")
EXPR_NAMES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
VA_NAMES = ("valence", "arousal")
NUM_AU = len(AU_NAMES)
NUM_EXPR = len(EXPR_NAMES)
VA_BINS = 20

# Aff-Wild2 ABAW-2020 annotation headers (first line of every .txt) and invalid markers.
HEADERS = {"au": ",".join(AU_NAMES), "expr": ",".join(EXPR_NAMES), "va": ",".join(VA_NAMES)}
INVALID_AU = -1
INVALID_EXPR = -1
INVALID_VA = -5.0

SPLITS = ("train", "val")


class DataError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


@dataclass(frozen=True)
class FrameRecord:
    """One face frame as a reader found it, before it is written to a shard.

    `image` is the path of the image file; `crop` an optional (left, top, right, bottom) box to cut from it
    (ExpW faces). A missing label is None. `au` holds 8 ints in AU_NAMES order, `expr` an index into
    EXPR_NAMES, `va` (valence, arousal) in [-1, 1].
    """

    source: str
    video: str
    frame: int
    split: str
    image: str
    au: Optional[tuple[int, ...]] = None
    expr: Optional[int] = None
    va: Optional[tuple[float, float]] = None
    crop: Optional[tuple[int, int, int, int]] = None
    rotate: float = 0.0  # degrees, counter-clockwise, applied before `crop` (AFEW-VA eye-line alignment)

    @property
    def key(self) -> str:
        return sample_key(self.source, self.video, self.frame)

    def labels(self) -> dict:
        """The shard's .json payload (the shard sample schema, CONTRIBUTING.md)."""
        return {
            "source": self.source,
            "video": self.video,
            "frame": self.frame,
            "au": list(self.au) if self.au is not None else None,
            "expr": self.expr,
            "va": list(self.va) if self.va is not None else None,
        }


def sample_key(source: str, video: str, frame: int) -> str:
    return f"{source}/{video}/{frame:05d}"


def video_of(key: str) -> str:
    """Sample key `<source>/<video>/<frame>` -> `<source>/<video>`."""
    return key.rpartition("/")[0]


def check_au(values, where: str) -> Optional[tuple[int, ...]]:
    """8 AU values (0/1, or -1 anywhere = missing) -> tuple or None; anything else raises DataError."""
    if len(values) != NUM_AU:
        raise DataError(f"{where}: expected {NUM_AU} AU values, got {len(values)}")
    out = []
    for v in values:
        if v not in (0, 1, INVALID_AU):
            raise DataError(f"{where}: AU value {v!r} is not 0, 1 or {INVALID_AU}")
        out.append(int(v))
    return None if INVALID_AU in out else tuple(out)


def check_expr(value, where: str) -> Optional[int]:
    """Expression index 0..6 (or -1 = missing) -> int or None; anything else raises DataError."""
    if value == INVALID_EXPR:
        return None
    if value not in range(NUM_EXPR):
        raise DataError(f"{where}: expression {value!r} is not in 0..{NUM_EXPR - 1} or {INVALID_EXPR}")
    return int(value)


def check_va(valence: float, arousal: float, where: str) -> Optional[tuple[float, float]]:
    """Valence/arousal in [-1, 1] (either -5 = missing) -> tuple or None; anything else raises DataError."""
    if valence == INVALID_VA or arousal == INVALID_VA:
        return None
    for name, v in (("valence", valence), ("arousal", arousal)):
        if not math.isfinite(v) or not -1.0 <= v <= 1.0:
            raise DataError(f"{where}: {name} {v!r} is outside [-1, 1] and not {INVALID_VA:g}")
    return (float(valence), float(arousal))
