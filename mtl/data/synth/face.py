"""Procedural face renderer: a drawn face whose geometry is moved by action-unit intensities.

A face lives in *face units*: origin midway between the eyes, x to the right, y down, the face outline spans
y in about [-1, 1]. Every part is a filled polygon or a polyline in face units; one affine map per frame
(rotation, scale, shift) places them on a canvas SUPERSAMPLE times the output size, which is box-downsampled
(anti-aliasing), lit by a linear brightness gradient and given sensor grain. Only numpy and PIL are used.

AU intensities come in the renderer's `au_names` order (ABAW 2020's 8 by default; any of MOTIONS, which covers
ABAW3's 12 too); 0 is rest, 1 full action. A signed `smirk` draws a one-sided look (ABAW3's "Other" class): the
lip corner on one side lifted and pulled out, the brow on that side raised; its sign picks the side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mtl.data.synth.looks import GRAIN_MARGIN, Colour, Identity, Look, Occluder, mix
from mtl.labels import AU_NAMES

SUPERSAMPLE = 2
FACE_HALF_HEIGHT = 0.36  # face half-height as a fraction of the image side, at scale 1
ACTION_GAIN = 1.6  # how far a full action (intensity 1) moves the parts, relative to the geometry below

# Every AU with a motion here; an AU absent from a renderer's `au_names` stays at rest.
MOTIONS = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU20", "AU23", "AU24", "AU25", "AU26")
_ANGLES = np.linspace(0, 2 * np.pi, 40, endpoint=False)
_CIRCLE_X, _CIRCLE_Y = np.cos(_ANGLES), np.sin(_ANGLES)
_T = np.linspace(-1.0, 1.0, 15)  # parameter along eyes and lips, corner to corner
_S = (_T + 1) / 2  # the same samples in [0, 1], along brows and folds
_ARCH = 1.0 - _T**2  # 0 at the corners, 1 in the middle
_LID = _ARCH**0.8  # eyelid profile
_LIP = np.sqrt(_ARCH)  # lip thickness profile
_CUPID = 1 - 0.25 * np.exp(-((_T / 0.25) ** 2))  # dip in the middle of the upper lip
_DARK = (45, 15, 20)  # mouth interior, and the marks of AU23 and AU24 (visible on any skin)

Curve = tuple[np.ndarray, np.ndarray]  # x and y arrays of a polyline or polygon, in face units


@dataclass(frozen=True)
class Part:
    """One drawn element in face units: a filled polygon (width 0) or a polyline `width` face units thick."""

    curve: Curve
    colour: Colour
    width: float = 0.0


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> Curve:
    return cx + rx * _CIRCLE_X, cy + ry * _CIRCLE_Y


def _band(x: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> Curve:
    """Closed polygon between two curves over the same x (top left to right, then bottom back)."""
    return np.concatenate([x, x[::-1]]), np.concatenate([top, bottom[::-1]])


def _segment(x0: float, y0: float, x1: float, y1: float) -> Curve:
    return np.array([x0, x1]), np.array([y0, y1])


def _bezier(start: tuple[float, float], control: tuple[float, float], end: tuple[float, float],
            t: np.ndarray) -> Curve:
    """Quadratic Bezier curve sampled at t in [0, 1]."""
    a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t**2
    return a * start[0] + b * control[0] + c * end[0], a * start[1] + b * control[1] + c * end[1]


def _outline(identity: Identity, drop: float = 0.0) -> Curve:
    """The face outline; `drop` > 0 gives only its lower part, with the chin lowered by `drop` (AU26)."""
    y = -_CIRCLE_Y
    x = identity.face_width * _CIRCLE_X * (1.0 - identity.jaw * 0.35 * np.clip(y, 0, None) ** 2)
    if drop <= 0:
        return x, y
    low = y > 0.1
    return x[low], y[low] + drop * (y[low] - 0.1) / 0.9


def head_parts(identity: Identity) -> list[Part]:
    """Back-to-front parts no AU moves: clothes, neck, hair, ears, face outline, hair over the forehead."""
    w = identity.face_width
    shade = mix(identity.skin, (0, 0, 0), 0.18)
    parts = [Part(_ellipse(0, 2.0, 1.7, 0.75), identity.clothes),
             Part((np.array([-0.35, 0.35, 0.42, -0.42]) * w, np.array([0.5, 0.5, 1.4, 1.4])), shade)]
    if identity.hair_style == "long":
        parts.append(Part((np.array([-w - 0.22, w + 0.22, w + 0.3, -w - 0.3]), np.array([-0.1, -0.1, 1.3, 1.3])),
                          identity.hair))
    if identity.hair_style != "bald":
        parts.append(Part(_ellipse(0, -0.12, w * 1.1 + 0.02 * (identity.hair_style == "long"), 1.02), identity.hair))
    parts += [Part(_ellipse(side * w * 0.98, -0.05, 0.1, 0.17), shade) for side in (-1, 1)]
    parts.append(Part(_outline(identity), identity.skin))
    if identity.hair_style != "bald":
        line = -0.5 if identity.hair_style == "fringe" else identity.hairline
        half = math.acos(min(-line / 1.04, 1.0))
        theta = np.linspace(-half, half, 21)
        parts.append(Part((np.append(w * 1.04 * np.sin(theta), 0.0), np.append(-1.04 * np.cos(theta), line + 0.05)),
                          identity.hair))
    return parts


def feature_parts(identity: Identity, au: Mapping[str, float], gaze: float = 0.0) -> list[Part]:
    """Back-to-front parts moved by the intensities `au` (AU name or "smirk" -> value; every name of MOTIONS and
    "smirk" must be present)."""
    parts = [Part(_outline(identity, 0.1 * au["AU26"]), identity.skin)] if au["AU26"] > 0.05 else []
    parts += _forehead(identity, au) + _cheeks(identity, au)
    for side in (-1, 1):
        parts += _eye(identity, au, side, gaze) + _brow(identity, au, side)
    parts += _nose_and_folds(identity, au) + _mouth(identity, au)
    return parts + _glasses(identity) if identity.glasses else parts


def _smirk(au: Mapping[str, float], side: int) -> float:
    """Strength of the one-sided look on `side` (-1 left, 1 right): |smirk| on the side its sign names, else 0."""
    return max(au["smirk"] * side, 0.0)


def _crease(identity: Identity, depth: float) -> Colour:
    """Skin darkened by a wrinkle of depth in [0, 1]."""
    return mix(identity.skin, mix(identity.skin, (40, 20, 10), 0.55), depth)


def _forehead(idy: Identity, au: Mapping[str, float]) -> list[Part]:
    """AU1/AU2 wrinkle the forehead horizontally; AU4 draws vertical furrows between the brows."""
    parts = []
    raise_ = max(au["AU1"], 0.7 * au["AU2"])
    if raise_ > 0.15:
        parts += [Part((half * _T, y - 0.03 * _ARCH), _crease(idy, 0.6 * raise_), 0.022)
                  for y, half in ((-0.42, 0.32), (-0.5, 0.26))]
    frown = au["AU4"]
    if frown > 0.15:
        parts += [Part(_segment(side * 0.05, -0.36, side * 0.06, -0.2), _crease(idy, 0.8 * frown), 0.022)
                  for side in (-1, 1)]
    return parts


def _cheeks(idy: Identity, au: Mapping[str, float]) -> list[Part]:
    """AU6 lifts and rounds the cheeks (a blush patch moving up) and adds crow's feet."""
    lift = au["AU6"]
    colour = mix(idy.skin, (200, 70, 70), 0.12 + 0.3 * lift)
    parts = [Part(_ellipse(side * (idy.eye_spacing + 0.05), 0.24 - 0.12 * lift, 0.15, 0.09 + 0.04 * lift), colour)
             for side in (-1, 1)]
    if lift > 0.15:
        for side in (-1, 1):
            x = side * (idy.eye_spacing + idy.eye_width + 0.03)
            parts += [Part(_segment(x, 0.0, x + side * 0.08, dy), _crease(idy, 0.9 * lift), 0.02)
                      for dy in (-0.06, 0.045)]
    return parts


def _eye(idy: Identity, au: Mapping[str, float], side: int, gaze: float) -> list[Part]:
    """Almond eye; AU6 raises the lower lid, AU4 lowers the upper lid, AU1/AU2 widen it; AU7 narrows both lids
    (the lower one straightened, with a tension line under it)."""
    cx, half = side * idy.eye_spacing, idy.eye_width
    tighten = min(au["AU7"], 1.0)
    up = idy.eye_height * (1 + 0.3 * max(au["AU1"], au["AU2"]) - 0.3 * au["AU4"]
                           - 0.15 * au["AU6"] - 0.35 * tighten)
    down = idy.eye_height * 0.8 * (1 - 0.7 * min(au["AU6"], 1.0)) * (1 - 0.65 * tighten)
    x = cx + half * _T
    upper = -up * _LID
    lower = down * _LID ** (1 - 0.6 * tighten)
    parts = [Part(_band(x, upper, lower), (235, 232, 225))]
    for radius, colour in ((idy.eye_height * 0.95, idy.iris), (idy.eye_height * 0.4, (15, 10, 10))):
        disc_x, disc_y = _ellipse(cx + gaze * half * 0.45, 0.0, radius, radius)
        lid = (1 - np.clip((disc_x - cx) / half, -1, 1) ** 2) ** 0.8
        parts.append(Part((disc_x, np.clip(disc_y, -up * lid, down * lid)), colour))
    parts.append(Part((x, upper), (30, 20, 20), 0.025))
    if tighten > 0.1:
        parts += [Part((x, lower), mix(idy.skin, (60, 30, 25), 0.6 * tighten), 0.025),
                  Part((cx + 0.8 * half * _T, lower + 0.06), _crease(idy, 0.8 * tighten), 0.022)]
    return parts


def _brow(idy: Identity, au: Mapping[str, float], side: int) -> list[Part]:
    """AU1 raises the inner end, AU2 the outer end, AU4 pulls the brow down and toward the midline; the smirk
    raises its side's brow."""
    a1, a2, a4 = au["AU1"], au["AU2"], au["AU4"]
    base = -idy.brow_gap + 0.09 * a4 - 0.06 * _smirk(au, side)
    inner = (side * (idy.eye_spacing - idy.eye_width - 0.02 - 0.05 * a4), base - 0.15 * a1 + 0.05 * a4)
    outer = (side * (idy.eye_spacing + idy.eye_width + 0.05), base - 0.15 * a2 + 0.02 - 0.04 * _smirk(au, side))
    middle = ((inner[0] + outer[0]) / 2, base - 0.04 - 0.07 * a1 - 0.08 * a2)
    x, y = _bezier(inner, middle, outer, _S)
    half = idy.brow_thickness * (1.1 - 0.5 * _S) / 2  # tapering toward the outer end
    return [Part(_band(x, y - half, y + half), mix(idy.hair, (0, 0, 0), 0.3))]


def _mouth_corner(idy: Identity, au: Mapping[str, float], side: int = 0) -> tuple[float, float]:
    """(half-width, y) of the lip corners: AU12 lifts and widens, AU15 pulls down, AU20 stretches, AU23 narrows;
    with `side` (-1 or 1), that corner's, which the smirk lifts and widens."""
    a12, a15, a20 = au["AU12"], au["AU15"], au["AU20"]
    half = idy.mouth_width * (1 + 0.15 * a12 + 0.5 * a20 - 0.06 * a15 - 0.18 * au["AU23"])
    lift = _smirk(au, side)
    return half * (1 + 0.1 * lift), idy.mouth_y - 0.17 * a12 + 0.14 * a15 + 0.03 * a20 - 0.15 * lift


def _nose_and_folds(idy: Identity, au: Mapping[str, float]) -> list[Part]:
    """Nostrils, nose side and the nasolabial folds, which deepen with AU12 and AU6; AU10 lifts and flares the
    nostrils and deepens the folds; the smirk deepens its side's fold."""
    y = idy.nose_length
    nostril = mix(idy.skin, (30, 15, 10), 0.6)
    flare = 1 + 0.3 * au["AU10"]
    parts = [Part(_ellipse(side * 0.055 * flare, y - 0.03 * au["AU10"], 0.035 * flare, 0.02 * flare), nostril)
             for side in (-1, 1)]
    parts.append(Part(_segment(0.04, -0.05, 0.08, y - 0.04), _crease(idy, 0.4), 0.022))
    depth = 0.2 + 0.6 * au["AU12"] + 0.2 * au["AU6"] + 0.5 * au["AU10"]
    for side in (-1, 1):
        half, corner_y = _mouth_corner(idy, au, side)
        curve = _bezier((side * 0.13, y - 0.02), (side * (half + 0.06), y + 0.08),
                        (side * (half + 0.05), corner_y - 0.02), _S[::3])
        parts.append(Part(curve, _crease(idy, depth + 0.4 * _smirk(au, side)), 0.022))
    return parts


def _mouth(idy: Identity, au: Mapping[str, float]) -> list[Part]:
    """Lips around a mid-line bent by the corners (the smirk bends one side up). AU25 parts them, AU26 drops the
    jaw (the lower lip further), AU20 thins them, AU23 tightens them (narrower, thinner, darker, a hard rim), AU24
    presses them (thin, flat, a dark line, bulges above and below), AU10 lifts the upper lip; creases mark AU20 and
    AU15."""
    half, corner_y = _mouth_corner(idy, au)
    one_side = np.clip(au["smirk"] * _T, 0, None)  # |smirk| x |t| on the smirk's side, 0 on the other
    x = half * _T * (1 + 0.1 * one_side)
    tighten, press = min(au["AU23"], 1.0), min(au["AU24"], 1.0)
    mid = idy.mouth_y + (corner_y - idy.mouth_y) * (1 - 0.8 * press) * _T**2 - 0.15 * one_side * np.abs(_T)
    gap = 0.1 * au["AU25"] * _ARCH**0.7
    low = gap + 0.2 * au["AU26"] * _ARCH**0.6  # the lower lip's drop
    stretch = au["AU20"]
    lip = idy.lip_thickness * (1 - 0.45 * min(stretch, 1.0)) * (1 - 0.35 * tighten - 0.55 * press) * _LIP
    top = mid - gap - lip * _CUPID - 0.08 * au["AU10"] * _ARCH**0.5
    parts = [Part(_band(x, top, mid + low + 1.2 * lip), mix(idy.lips, _DARK, 0.7 * tighten))]
    if tighten > 0.1:  # tightened lips: darker, with a hard rim
        parts.append(Part(_band(x, top, mid + low + 1.2 * lip), _DARK, 0.03))
    if press > 0.1:  # bulges of pressed lips above and below the mouth
        parts += [Part((0.8 * x, y), mix(idy.skin, _DARK, 0.7 * press), 0.035)
                  for y in (top - 0.05 - 0.02 * _ARCH, mid + 1.2 * lip + 0.06 + 0.02 * _ARCH)]
    if stretch > 0.15:  # skin bunching just outside the stretched corners
        parts += [Part(_segment(side * (half + 0.03), corner_y - 0.07, side * (half + 0.045), corner_y + 0.07),
                       _crease(idy, 0.9 * stretch), 0.022) for side in (-1, 1)]
    depress = au["AU15"]
    if depress > 0.15:  # creases running down and out from the lowered corners
        parts += [Part(_segment(side * (half + 0.01), corner_y + 0.03, side * (half + 0.06), corner_y + 0.15),
                       _crease(idy, 0.9 * depress), 0.022) for side in (-1, 1)]
    if au["AU25"] <= 0.08 and au["AU26"] <= 0.08:
        return parts + [Part((x, mid), mix(idy.lips, (40, 10, 15), 0.6), 0.02 + 0.03 * press)]
    teeth = np.minimum(mid - gap + 0.04 * _ARCH, mid + low)
    return parts + [Part(_band(x, mid - gap, mid + low), _DARK),
                    Part(_band(x[2:-2], (mid - gap)[2:-2], teeth[2:-2]), (225, 220, 205))]


def _glasses(idy: Identity) -> list[Part]:
    rim = idy.eye_width * 1.5
    parts = []
    for side in (-1, 1):
        x, y = _ellipse(side * idy.eye_spacing, 0.0, rim, 0.13)
        parts.append(Part((np.append(x, x[0]), np.append(y, y[0])), (30, 30, 30), 0.025))
    bridge = idy.eye_spacing - rim
    return parts + [Part(_segment(-bridge, -0.02, bridge, -0.02), (30, 30, 30), 0.025)]


def occluder_parts(occ: Occluder) -> list[Part]:
    """The occluder as parts in image-fraction coordinates."""
    a = math.radians(occ.angle)
    cos, sin = math.cos(a), math.sin(a)

    def placed(curve: Curve) -> Curve:
        u, v = curve
        return occ.x + u * cos - v * sin, occ.y + u * sin + v * cos

    if occ.kind == "bar":
        half_len, half_wid = occ.length / 2, occ.length / 8
        return [Part(placed((np.array([-1, 1, 1, -1]) * half_len, np.array([-1, -1, 1, 1]) * half_wid)), occ.colour)]
    palm = occ.length / 3
    fingers = [_ellipse(palm * 1.3, (k - 1.5) * palm * 0.45, palm * 0.65, palm * 0.17) for k in range(4)]
    edge = mix(occ.colour, (0, 0, 0), 0.25)
    parts = [Part(placed(_ellipse(0, 0, palm, palm * 0.8)), occ.colour)]
    for finger in fingers:
        parts += [Part(placed(finger), occ.colour), Part(placed(finger), edge, 0.004)]
    return parts


def _draw(draw: ImageDraw.ImageDraw, parts: list[Part], matrix: np.ndarray, offset: tuple[float, float],
          unit: float) -> None:
    """Draw parts after mapping every point p to matrix @ p + offset (canvas pixels); widths scale by `unit`."""
    x = np.concatenate([part.curve[0] for part in parts])
    y = np.concatenate([part.curve[1] for part in parts])
    (a, b), (c, d) = matrix
    flat = np.empty(2 * len(x))
    flat[0::2] = a * x + b * y + offset[0]
    flat[1::2] = c * x + d * y + offset[1]
    coords = flat.tolist()
    start = 0
    for part in parts:
        end = start + 2 * len(part.curve[0])
        if part.width > 0:
            draw.line(coords[start:end], fill=part.colour, width=max(1, round(part.width * unit)))
        else:
            draw.polygon(coords[start:end], fill=part.colour)
        start = end


class FaceRenderer:
    """Draws one identity over one backdrop at a fixed size; `render` is called once per frame.

    `grain_std` is the standard deviation of the additive sensor grain (grey levels), drawn once from `grain_rng`.
    `au_names` names the AU intensities `render` takes, in order (each one of MOTIONS).
    """

    def __init__(self, identity: Identity, background: np.ndarray, grain_std: float = 0.0,
                 grain_rng: Optional[np.random.Generator] = None, au_names: Sequence[str] = AU_NAMES):
        unknown = sorted(set(au_names) - set(MOTIONS))
        if unknown:
            raise ValueError(f"no face motion for {', '.join(unknown)} (known: {', '.join(MOTIONS)})")
        self.au_names = tuple(au_names)
        self.identity = identity
        self.size = background.shape[0]
        self._big = self.size * SUPERSAMPLE
        self._canvas = Image.fromarray(background).resize((self._big, self._big), Image.BILINEAR)
        self._head = head_parts(identity)
        axis = np.linspace(-1.0, 1.0, self.size, dtype=np.float32)
        # light-gradient coordinates, repeated over the colour channels (broadcasting over 3 is slow)
        self._gx = np.repeat(np.broadcast_to(axis[None, :, None], (self.size, self.size, 1)), 3, axis=2)
        self._gy = np.ascontiguousarray(self._gx.transpose(1, 0, 2))
        side = self.size + GRAIN_MARGIN
        rng = grain_rng if grain_rng is not None else np.random.default_rng(0)
        self._grain = rng.normal(0.0, grain_std, (side, side, 3)).astype(np.float32) if grain_std > 0 else None

    def render(self, au: Sequence[float], look: Look = Look(), smirk: float = 0.0) -> Image.Image:
        """The face with AU intensities `au` (one per `au_names`) and the one-sided look `smirk` (in [-1.2, 1.2],
        its sign the side, 0 none) under `look`, as an RGB image."""
        img = self._canvas.copy()
        draw = ImageDraw.Draw(img)
        a = math.radians(look.angle)
        unit = FACE_HALF_HEIGHT * self._big * look.scale
        rotation = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # counter-clockwise, y down
        centre = (self._big * (0.5 + look.dx), self._big * (0.5 + look.dy))
        drawn = ACTION_GAIN * np.clip(np.asarray(au, dtype=np.float64), 0.0, 1.2)
        if drawn.shape != (len(self.au_names),):
            raise ValueError(f"expected {len(self.au_names)} AU intensities ({', '.join(self.au_names)}), "
                             f"got shape {drawn.shape}")
        actions = {name: 0.0 for name in MOTIONS}
        actions.update(zip(self.au_names, drawn))
        actions["smirk"] = ACTION_GAIN * min(max(float(smirk), -1.2), 1.2)
        features = feature_parts(self.identity, actions, look.gaze)
        _draw(draw, self._head + features, unit * rotation, centre, unit)
        if look.occluder is not None:
            _draw(draw, occluder_parts(look.occluder), self._big * np.eye(2), (0.0, 0.0), self._big)
        img = img.reduce(SUPERSAMPLE)
        if look.blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(look.blur))
        return self._light(img, look)

    def _light(self, img: Image.Image, look: Look) -> Image.Image:
        """Linear brightness gradient from the light side, global brightness, then additive grain."""
        gain = look.brightness + look.light * math.cos(look.light_angle) * self._gx
        gain += look.light * math.sin(look.light_angle) * self._gy
        pixels = np.asarray(img, dtype=np.float32)
        pixels *= gain
        if self._grain is not None:
            gx, gy = look.grain
            pixels += self._grain[gy:gy + self.size, gx:gx + self.size]
        np.clip(pixels, 0, 255, out=pixels)
        return Image.fromarray(pixels.astype(np.uint8))
