"""Test media made here: synthetic faces (mtl.data.synth) drawn into larger scenes, as photos and as videos
written with PyAV, with the true face boxes.

A face is placed by its centre (the eye midpoint, the origin of face units), its `unit` (pixels per face unit:
the outline spans y in [-unit, unit]) and an in-plane angle. Its true box is the axis-aligned box of the rotated
face outline (the drawn oval, without hair, ears or neck)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np
from PIL import Image

from mtl.data.synth.face import FACE_HALF_HEIGHT, FaceRenderer
from mtl.data.synth.looks import Look, random_background, random_identity

Box = tuple[float, float, float, float]  # x, y, w, h in pixels


@dataclass(frozen=True)
class FacePlacement:
    cx: float  # eye midpoint, pixels
    cy: float
    unit: float  # pixels per face unit
    angle: float = 0.0  # degrees counter-clockwise
    seed: int = 0  # identity and expression


def true_box(face: FacePlacement, face_width: float) -> Box:
    """Axis-aligned box of the face oval (half-axes face_width x 1 face units) rotated by face.angle."""
    a = math.radians(face.angle)
    half_w = face.unit * math.hypot(face_width * math.cos(a), math.sin(a))
    half_h = face.unit * math.hypot(face_width * math.sin(a), math.cos(a))
    return face.cx - half_w, face.cy - half_h, 2 * half_w, 2 * half_h


def render_scene(size: int, faces: Sequence[FacePlacement], background_seed: int,
                 au_phase: float = 0.0) -> tuple[np.ndarray, list[Box]]:
    """A size x size RGB scene (uint8) with the faces drawn in order, and their true boxes."""
    scene = random_background(np.random.default_rng([background_seed, 7]), size)
    boxes = []
    for face in faces:
        rng = np.random.default_rng([face.seed, 11])
        identity = random_identity(rng)
        au = np.clip(rng.uniform(0, 0.8, 8) * (0.5 + 0.5 * math.sin(au_phase + face.seed)), 0, 1)
        look = Look(angle=face.angle, dx=face.cx / size - 0.5, dy=face.cy / size - 0.5,
                    scale=face.unit / (FACE_HALF_HEIGHT * size), brightness=float(rng.uniform(0.85, 1.1)))
        scene = np.asarray(FaceRenderer(identity, scene).render(au, look))
        boxes.append(true_box(face, identity.face_width))
    return scene, boxes


def random_scene(rng: np.random.Generator, size: int, count: int, unit_range: tuple[float, float] = (14, 40),
                 max_angle: float = 25.0) -> tuple[np.ndarray, list[Box]]:
    """A scene with `count` non-overlapping faces at random places, sizes and angles (a benchmark sample)."""
    faces: list[FacePlacement] = []
    for _ in range(count * 20):
        if len(faces) == count:
            break
        unit = float(rng.uniform(*unit_range))
        margin = 1.6 * unit
        if size - 2 * margin <= 0:
            continue
        candidate = FacePlacement(float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin)),
                                  unit, float(rng.uniform(-max_angle, max_angle)), int(rng.integers(1 << 30)))
        if all(math.hypot(candidate.cx - f.cx, candidate.cy - f.cy) > 2.6 * (candidate.unit + f.unit) for f in faces):
            faces.append(candidate)
    return render_scene(size, faces, int(rng.integers(1 << 30)))


def clip_frames(size: int, faces: Sequence[FacePlacement], frames: int, drift: float = 1.5,
                background_seed: int = 0) -> Iterator[tuple[np.ndarray, list[Box]]]:
    """Frames of a clip: each face drifts `drift` pixels per frame to the right and changes expression."""
    for t in range(frames):
        moved = [FacePlacement(f.cx + drift * t, f.cy, f.unit, f.angle, f.seed) for f in faces]
        yield render_scene(size, moved, background_seed, au_phase=0.4 * t)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 10, codec: str = "libx264") -> Path:
    """Encode RGB frames with PyAV (yuv420p; the container follows the file suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_photo(path: Path, pixels: np.ndarray, mode: str = "RGB", **save_args) -> Path:
    """Save an RGB array as a photo in `mode` (RGB, L, RGBA with a varying alpha, P)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        alpha = np.full(pixels.shape[:2], 255, np.uint8)
        alpha[: pixels.shape[0] // 8] = 40  # a translucent strip at the top
        image = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, **save_args)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to the first `keep` of its bytes (a video whose end is missing)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
