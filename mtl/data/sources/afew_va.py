"""AFEW-VA reader: valence-arousal labelled movie clips, one record per frame, with eye-line face alignment.

Layout:
  ROOT/<part>/<clip>/<frame>.png     parts are any folders (the release has 01 … 12); frame ids are 5-digit (00000)
  ROOT/<part>/<clip>/<clip>.json     {"frames": {"00000": {"valence": v, "arousal": a, "landmarks": [[x, y] × 68]}}}

Valence and arousal in [-10, 10] are divided by 10 (VA only: the same records under every protocol). A record's
video is the clip name, or `<part>_<clip>` where two parts hold the same clip name; its frame the frame id. One work
unit per clip.

Alignment (docs/recipe.md §4.3) from the 68 iBUG landmarks of each frame: rotate the image about its centre so the
line between the eye centres (means of points 36-41 and 42-47) is level, by the smallest such angle (within ±90°),
then cut a square of side 2·max(eye distance, eye-to-mouth distance) centred halfway between the eye centre and the
mouth centre (mean of 48-67). A record stores it as `rotate` (degrees counter-clockwise, as PIL's Image.rotate
takes it: about the image centre, same canvas) and `crop` in the rotated image, rounded half up to whole pixels (it
may pass the border: PIL pads). Landmarks are pixel indices, so a landmark's point in PIL's edge coordinates is
index + 0.5. The rotation centre needs the frame size, read from the header of the clip's first frame that opens (a
clip has one size); when no frame of a clip opens, its records carry no alignment (prepare skips them all anyway).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from mtl.labels import FrameRecord
from mtl.errors import DataError
from mtl.data.sources.base import SOURCES, Source, WorkUnit
from mtl.data.sources._text import require_file, subdirs, unique_names

SOURCE = "afew_va"
VA_SCALE = 10.0
NUM_LANDMARKS = 68
LEFT_EYE, RIGHT_EYE, MOUTH = slice(36, 42), slice(42, 48), slice(48, 68)

Box = tuple[int, int, int, int]


def discover(root: Path) -> list[WorkUnit]:
    clips = {(part.name, clip.name): clip for part in subdirs(root) for clip in subdirs(part)}
    videos = unique_names({key: (key[1], f"{key[0]}_{key[1]}") for key in clips}, str(root))
    units = []
    for key, clip in clips.items():
        annotation = require_file(clip / f"{clip.name}.json")
        units.append(WorkUnit(SOURCE, videos[key], (str(annotation), videos[key])))
    return units


def read(unit: WorkUnit) -> Iterator[FrameRecord]:
    path, video = Path(unit.args[0]), unit.args[1]
    frames = load_frames(path)
    size = first_image_size([path.parent / f"{frame_id}.png" for frame_id, _, _ in frames])
    for frame_id, va, landmarks in frames:
        rotate, crop = align(landmarks, size, f"{path}: frame {frame_id}")
        image = path.parent / f"{frame_id}.png"
        yield FrameRecord(SOURCE, video, int(frame_id), "train", str(image), va=va, crop=crop, rotate=rotate)


def load_frames(path: Path) -> list[tuple[str, tuple[float, float], np.ndarray]]:
    """(frame id, (valence, arousal) in [-1, 1], landmarks 68×2) of every frame of a clip's JSON, in frame order."""
    try:
        frames = json.loads(path.read_text(encoding="utf-8"))["frames"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not an AFEW-VA annotation with a 'frames' object ({e!r})") from None
    if not isinstance(frames, dict):
        raise DataError(f"{path}: 'frames' is not an object")
    for frame_id in frames:
        if not (frame_id.isascii() and frame_id.isdigit()):
            raise DataError(f"{path}: frame id {frame_id!r} is not a number")
    if len({int(f) for f in frames}) != len(frames):
        raise DataError(f"{path}: two frame ids name the same frame number")
    return [parse_frame(f, frames[f], f"{path}: frame {f}") for f in sorted(frames, key=int)]


def parse_frame(frame_id: str, entry, where: str) -> tuple[str, tuple[float, float], np.ndarray]:
    if not isinstance(entry, dict) or not {"valence", "arousal", "landmarks"} <= entry.keys():
        raise DataError(f"{where}: expected an object with valence, arousal and landmarks")
    va = []
    for name in ("valence", "arousal"):
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -VA_SCALE <= value <= VA_SCALE:
            raise DataError(f"{where}: {name} {value!r} is not a number in [-{VA_SCALE:g}, {VA_SCALE:g}]")
        va.append(value / VA_SCALE)
    try:
        landmarks = np.asarray(entry["landmarks"], dtype=np.float64)
    except (ValueError, TypeError):
        raise DataError(f"{where}: landmarks are not a list of [x, y] numbers") from None
    if landmarks.shape != (NUM_LANDMARKS, 2) or not np.isfinite(landmarks).all():
        raise DataError(f"{where}: expected {NUM_LANDMARKS} finite [x, y] landmarks, got shape {landmarks.shape}")
    return frame_id, (va[0], va[1]), landmarks


def first_image_size(paths: list[Path]) -> Optional[tuple[int, int]]:
    """(width, height) from the header of the first image that opens; None if none does."""
    for path in paths:
        try:
            with Image.open(path) as image:
                return image.size
        except OSError:
            continue
    return None


def align(landmarks: np.ndarray, size: Optional[tuple[int, int]], where: str) -> tuple[float, Optional[Box]]:
    """(rotate, crop) that level the eye line and frame the face (module docstring); (0.0, None) without a size."""
    points = landmarks + 0.5
    left_eye, right_eye = points[LEFT_EYE].mean(axis=0), points[RIGHT_EYE].mean(axis=0)
    eyes, mouth = (left_eye + right_eye) / 2, points[MOUTH].mean(axis=0)
    dx, dy = right_eye - left_eye if right_eye[0] >= left_eye[0] else left_eye - right_eye
    angle = math.degrees(math.atan2(dy, dx))  # dx >= 0: within ±90°, never turns a face upside down
    side = 2 * max(math.hypot(dx, dy), math.hypot(*(mouth - eyes)))
    if side < 1:
        raise DataError(f"{where}: landmarks span less than a pixel")
    if size is None:
        return 0.0, None
    cx, cy = rotate_point((eyes + mouth) / 2, angle, size)
    left, top, length = (math.floor(v + 0.5) for v in (cx - side / 2, cy - side / 2, side))
    return angle, (left, top, left + length, top + length)


def rotate_point(point: np.ndarray, angle: float, size: tuple[int, int]) -> tuple[float, float]:
    """Where PIL's `image.rotate(angle)` (counter-clockwise, about the centre, same canvas) moves `point`."""
    cx, cy = size[0] / 2, size[1] / 2
    theta = math.radians(angle)
    dx, dy = point[0] - cx, point[1] - cy
    return cx + math.cos(theta) * dx + math.sin(theta) * dy, cy - math.sin(theta) * dx + math.cos(theta) * dy


# Clips are consecutive frames, but not windowed by default: the reference trained its CNN-RNN on Aff-Wild2 only.
SOURCES.add(SOURCE, Source(SOURCE, "--afew-va", "AFEW-VA root (<part>/<clip>/).", discover, read))
