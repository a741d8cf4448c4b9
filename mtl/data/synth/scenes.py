"""Scenes: synthetic faces (`FaceRenderer`) drawn into a larger still image, with their true boxes, for the face
detectors' tests and `mtl bench detect`.

A face is placed by its centre (the eye midpoint, the origin of face units), its `unit` (pixels per face unit:
the outline spans y in [-unit, unit]) and an in-plane angle. Its true box is the axis-aligned box of the rotated
face outline (the drawn oval, without hair, ears or neck)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

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


def random_placements(rng: np.random.Generator, size: int, count: int, unit_range: tuple[float, float] = (14, 40),
                      max_angle: float = 25.0) -> list[FacePlacement]:
    """Up to `count` faces at random places, sizes (`unit_range`) and angles (within ±max_angle), apart from each
    other and the edges; fewer when 20 tries a face do not fit them."""
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
    return faces


def random_scene(rng: np.random.Generator, size: int, count: int, unit_range: tuple[float, float] = (14, 40),
                 max_angle: float = 25.0) -> tuple[np.ndarray, list[Box]]:
    """A scene with up to `count` non-overlapping faces (`random_placements`) on a random background."""
    return render_scene(size, random_placements(rng, size, count, unit_range, max_angle), int(rng.integers(1 << 30)))
