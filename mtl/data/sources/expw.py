"""ExpW (Expression in-the-Wild) reader: one expression-labelled face box of a web image per record.

Layout:
  ROOT/label/label.lst          one face per line, space separated:
                                image_name face_id top left right bottom confidence expression
  ROOT/image/origin/<image_name>

ExpW expression ids (0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral) are remapped to EXPR_NAMES,
the same indices under every protocol (abaw3's eighth class, Other, is never an ExpW label).
A record's video is the image's stem (its whole file name where two images share a stem), its frame the face_id,
and its crop the box (left, top, right, bottom) in the original image, so the faces of a multi-face image get
distinct keys. Work units are chunks of CHUNK_LINES lines of label.lst. `discover` parses the whole list (a few MB)
because two checks span chunks: an (image, face_id) pair appears once, and video names are unique.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from mtl.labels import NUM_EXPR, FrameRecord
from mtl.errors import DataError
from mtl.data.sources.base import SOURCES, Source, WorkUnit
from mtl.data.sources._text import (
    numbered_lines,
    parse_float,
    parse_int,
    require_dir,
    require_file,
    split_fields,
    unique_names,
)

SOURCE = "expw"
CHUNK_LINES = 5000
EXPW_TO_EXPR = (1, 2, 3, 4, 5, 6, 0)  # ExpW id -> EXPR_NAMES index


@dataclass(frozen=True)
class Face:
    image: str
    face_id: int
    box: tuple[int, int, int, int]  # left, top, right, bottom
    expr: int  # EXPR_NAMES index


def discover(root: Path) -> list[WorkUnit]:
    label = require_file(root / "label" / "label.lst")
    require_dir(root / "image" / "origin")
    line_of: dict[tuple[str, int], int] = {}
    for number, face in faces(label, 1, None):
        pair = (face.image, face.face_id)
        if pair in line_of:
            raise DataError(f"{label}:{number}: face {face.face_id} of {face.image} already on line {line_of[pair]}")
        line_of[pair] = number
    videos = unique_names({image: (Path(image).stem, image) for image, _ in line_of}, str(label))
    renamed = tuple(sorted((image, video) for image, video in videos.items() if video != Path(image).stem))
    last = max(line_of.values(), default=0)
    units = []
    for first in range(1, last + 1, CHUNK_LINES):
        end = min(first + CHUNK_LINES - 1, last)
        units.append(WorkUnit(SOURCE, f"label.lst:{first}-{end}", (str(label), first, end, renamed)))
    return units


def read(unit: WorkUnit) -> Iterator[FrameRecord]:
    path, first, last, renamed = unit.args
    label = Path(path)
    images = label.parent.parent / "image" / "origin"
    videos = dict(renamed)
    for _, face in faces(label, first, last):
        yield FrameRecord(
            source=SOURCE,
            video=videos.get(face.image, Path(face.image).stem),
            frame=face.face_id,
            split="train",
            image=str(images / face.image),
            expr=face.expr,
            crop=face.box,
        )


def faces(label: Path, first: int, last: Optional[int]) -> Iterator[tuple[int, Face]]:
    """(line number, Face) of the lines first..last (inclusive, 1-based; last None: to the end)."""
    for number, line in numbered_lines(label):
        if last is not None and number > last:
            return
        if number >= first:
            yield number, parse_face(line, f"{label}:{number}")


def parse_face(line: str, where: str) -> Face:
    image, face_id, *box, confidence, expression = split_fields(line, None, 8, where)
    face = parse_int(face_id, "face_id", where)
    if face < 0:
        raise DataError(f"{where}: face_id {face} is negative")
    top, left, right, bottom = (parse_int(v, name, where) for v, name in zip(box, ("top", "left", "right", "bottom")))
    if right <= left or bottom <= top:
        raise DataError(f"{where}: empty face box left={left} top={top} right={right} bottom={bottom}")
    parse_float(confidence, "confidence", where)
    expw = parse_int(expression, "expression", where)
    if expw not in range(NUM_EXPR):
        raise DataError(f"{where}: expression {expw} is not an ExpW id 0..{NUM_EXPR - 1}")
    return Face(image, face, (left, top, right, bottom), EXPW_TO_EXPR[expw])


SOURCES.add(SOURCE, Source(SOURCE, "--expw", "ExpW root (label/, image/origin/).", discover, read))
