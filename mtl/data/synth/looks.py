"""Who is drawn and how a frame looks: random identities (skin, hair, proportions, glasses), occluders,
per-frame looks (pose, light, blur, grain) and backgrounds, for the face renderer (`mtl.data.synth.face`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

GRAIN_MARGIN = 16  # the grain field is this many pixels larger than the image; Look.grain picks the offset

Colour = tuple[int, int, int]

SKIN_LIGHT, SKIN_DARK = (238, 204, 178), (92, 60, 42)
HAIR_COLOURS: tuple[Colour, ...] = ((25, 20, 18), (70, 45, 28), (120, 80, 45), (190, 160, 100), (150, 150, 150),
                                    (140, 60, 30))
IRIS_COLOURS: tuple[Colour, ...] = ((60, 40, 25), (90, 60, 30), (60, 90, 120), (70, 100, 70), (40, 30, 25))
HAIR_STYLES = ("short", "long", "fringe", "bald")


@dataclass(frozen=True)
class Identity:
    """The look of one person: shape, colours and proportions, in face units."""

    skin: Colour
    hair: Colour
    hair_style: str  # one of HAIR_STYLES
    hairline: float  # y of the hairline (more negative = higher forehead)
    iris: Colour
    lips: Colour
    clothes: Colour
    face_width: float  # half-width of the face
    jaw: float  # 0 = round chin, 1 = narrow chin
    eye_spacing: float  # x of each eye centre
    eye_width: float  # eye half-width
    eye_height: float  # upper-lid opening
    brow_gap: float  # height of the brows above the eye centres
    brow_thickness: float
    nose_length: float  # y of the nostrils
    mouth_y: float
    mouth_width: float  # lip half-width at rest
    lip_thickness: float
    glasses: bool


@dataclass(frozen=True)
class Occluder:
    """Something in front of the face: a `bar` (microphone, cup, arm) or a `hand`. Coordinates are image fractions."""

    kind: str
    x: float
    y: float
    angle: float  # degrees
    length: float
    colour: Colour


@dataclass(frozen=True)
class Look:
    """Per-frame nuisance: pose, light, occlusion, blur and grain."""

    angle: float = 0.0  # in-plane head rotation, degrees counter-clockwise
    dx: float = 0.0  # face shift, fraction of the image side
    dy: float = 0.0
    scale: float = 1.0
    gaze: float = 0.0  # horizontal iris offset, fraction of the eye half-width
    light_angle: float = 0.0  # radians, the side the light comes from: 0 = right, pi/2 = below
    light: float = 0.0  # strength of the brightness gradient across the image
    brightness: float = 1.0
    occluder: Optional[Occluder] = None
    blur: float = 0.0  # Gaussian radius in output pixels
    grain: tuple[int, int] = (0, 0)  # offset into the renderer's grain field, each in [0, GRAIN_MARGIN)


def mix(a: Colour, b: Colour, t: float) -> Colour:
    """Colour a blended toward b by t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _jitter(rng: np.random.Generator, colour: Colour, amount: int) -> Colour:
    c = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def random_identity(rng: np.random.Generator) -> Identity:
    """A random person."""
    skin = _jitter(rng, mix(SKIN_LIGHT, SKIN_DARK, float(rng.beta(1.3, 1.6))), 12)
    lips = mix(skin, (150, 50, 55), float(rng.uniform(0.45, 0.7)))
    return Identity(
        skin=skin,
        hair=_jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 15),
        hair_style=HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[0.4, 0.3, 0.2, 0.1])],
        hairline=float(rng.uniform(-0.8, -0.62)),
        iris=_jitter(rng, IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))], 10),
        lips=lips,
        clothes=_jitter(rng, (128, 128, 128), 110),
        face_width=float(rng.uniform(0.68, 0.84)),
        jaw=float(rng.uniform(0.0, 1.0)),
        eye_spacing=float(rng.uniform(0.26, 0.34)),
        eye_width=float(rng.uniform(0.12, 0.15)),
        eye_height=float(rng.uniform(0.055, 0.075)),
        brow_gap=float(rng.uniform(0.17, 0.23)),
        brow_thickness=float(rng.uniform(0.045, 0.075)),
        nose_length=float(rng.uniform(0.2, 0.28)),
        mouth_y=float(rng.uniform(0.48, 0.56)),
        mouth_width=float(rng.uniform(0.22, 0.28)),
        lip_thickness=float(rng.uniform(0.04, 0.065)),
        glasses=bool(rng.random() < 0.15),
    )


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 backdrop: flat, smooth blotches, stripes or a vertical gradient."""
    base = rng.uniform(30, 225, 3)
    kind = rng.integers(4)
    if kind == 1:
        coarse = rng.uniform(-45, 45, (4, 4, 3)) + base
        smooth = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        return np.asarray(smooth)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 2:
        direction = rng.uniform(0, np.pi)
        period = rng.uniform(0.08, 0.3)
        wave = np.sin(2 * np.pi * (xx * np.cos(direction) + yy * np.sin(direction)) / period)
        field = wave[..., None] * rng.uniform(10, 35)
    elif kind == 3:
        field = (yy[..., None] - 0.5) * rng.uniform(-80, 80, 3)
    else:
        field = np.zeros((size, size, 1), np.float32)
    return np.clip(base + field, 0, 255).astype(np.uint8)
