"""Label vocabulary, raw-file markers and the per-frame record that every dataset reader yields."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from mtl.errors import DataError

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



@dataclass(frozen=True)
class Protocol:
    """A release's label schema (docs/recipe.md §7, §7.3): the AUs and expression classes it annotates, and the
    metric its challenge scores. `data.protocol` names one; index.json records the one its shards were written in.

    `partial_au`: a frame may carry some AUs and not others (-1 per AU), as when DISFA (8 of ABAW3's 12 AUs) is
    merged in; without it, -1 anywhere means the frame has no AU label (ABAW 2020's files)."""

    name: str
    au_names: tuple[str, ...]
    expr_names: tuple[str, ...]
    metric: str  # "abaw2020": AU 0.5 F1 + 0.5 acc, EXPR 0.67 F1 + 0.33 acc, VA mean CCC; "abaw3": P_MTL
    partial_au: bool

    @property
    def num_au(self) -> int:
        return len(self.au_names)

    @property
    def num_expr(self) -> int:
        return len(self.expr_names)

    @property
    def headers(self) -> dict[str, str]:
        """First line of each per-task annotation file of the release."""
        return {"au": ",".join(self.au_names), "expr": ",".join(self.expr_names), "va": ",".join(VA_NAMES)}

    @property
    def widths(self) -> dict[str, int]:
        """Output width of each task head: AU logits, EXPR logits, VA bin logits (valence's 20, then arousal's)."""
        return {"au": self.num_au, "expr": self.num_expr, "va": 2 * VA_BINS}

    def check_au(self, values, where: str) -> Optional[tuple[int, ...]]:
        """One frame's AU values (0/1, -1 = missing) -> tuple or None (no AU labelled); anything else raises
        DataError. With `partial_au`, -1 entries stay in the tuple (that AU unlabelled)."""
        if len(values) != self.num_au:
            raise DataError(f"{where}: expected {self.num_au} AU values, got {len(values)}")
        out = []
        for v in values:
            if v not in (0, 1, INVALID_AU):
                raise DataError(f"{where}: AU value {v!r} is not 0, 1 or {INVALID_AU}")
            out.append(int(v))
        if all(v == INVALID_AU for v in out) or (INVALID_AU in out and not self.partial_au):
            return None
        return tuple(out)

    def check_expr(self, value, where: str) -> Optional[int]:
        """Expression index (or -1 = missing) -> int or None; anything else raises DataError."""
        if value == INVALID_EXPR:
            return None
        if value not in range(self.num_expr):
            raise DataError(f"{where}: expression {value!r} is not in 0..{self.num_expr - 1} or {INVALID_EXPR}")
        return int(value)


ABAW2020 = Protocol("abaw2020", AU_NAMES, EXPR_NAMES, metric="abaw2020", partial_au=False)
ABAW3 = Protocol("abaw3", ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26"),
                 (*EXPR_NAMES, "Other"), metric="abaw3", partial_au=True)
PROTOCOLS = {p.name: p for p in (ABAW2020, ABAW3)}
DEFAULT_PROTOCOL = ABAW2020.name


def get_protocol(name: "Protocol | str | None") -> Protocol:
    """A registered protocol by name, or the one given (None: the default, ABAW 2020, which shards written before
    protocols were recorded hold); an unknown name raises DataError listing the known ones."""
    if isinstance(name, Protocol):
        return name
    if name is None:
        return PROTOCOLS[DEFAULT_PROTOCOL]
    if name not in PROTOCOLS:
        raise DataError(f"unknown label protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]


SPLITS = ("train", "val")
VA_LABEL_DECIMALS = 6  # labels are rounded to 1e-6 before binning: k/10 written in float32 or float64 bins alike


def va_bin(values):
    """VA values -> bin index 0..19 of the 20 bins of width 0.1 over [-1, 1] (the reference's np.digitize over
    linspace(-1, 1, 21) minus 1, 1.0 in bin 19; docs/recipe.md §2), for a float, a numpy array or a torch tensor.

    One rule for balancing and for the loss: the value is rounded to 1e-6 and binned in integer steps, so -0.9
    lands in bin 1 whether it arrives as float32 or float64 (float edges disagree on 8 of the 21 values k/10).
    Out-of-range values clip to bins 0 and 19. Returns the input's kind: int for a float, float-typed integral
    values for arrays and tensors (cast them for indexing)."""
    scale = 10 ** VA_LABEL_DECIMALS
    if not hasattr(values, "shape") or values.shape == ():  # a Python or numpy scalar
        index = (round(float(values) * scale) + scale) // (scale // 10)
        return int(min(max(index, 0), VA_BINS - 1))
    micro = (values * scale).round()
    return ((micro + scale) // (scale // 10)).clip(0, VA_BINS - 1)


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
    """8 AU values (0/1, or -1 anywhere = missing) -> tuple or None; anything else raises DataError (ABAW 2020)."""
    return ABAW2020.check_au(values, where)


def check_expr(value, where: str) -> Optional[int]:
    """Expression index 0..6 (or -1 = missing) -> int or None; anything else raises DataError (ABAW 2020)."""
    return ABAW2020.check_expr(value, where)


def check_va(valence: float, arousal: float, where: str) -> Optional[tuple[float, float]]:
    """Valence/arousal in [-1, 1] (either -5 = missing) -> tuple or None; anything else raises DataError."""
    if valence == INVALID_VA or arousal == INVALID_VA:
        return None
    for name, v in (("valence", valence), ("arousal", arousal)):
        if not math.isfinite(v) or not -1.0 <= v <= 1.0:
            raise DataError(f"{where}: {name} {v!r} is outside [-1, 1] and not {INVALID_VA:g}")
    return (float(valence), float(arousal))
