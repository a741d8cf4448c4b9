"""The procedural face: every AU moves its own region of the face, visibly even after downscaling."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mtl.data.synth.face import FACE_HALF_HEIGHT, FaceRenderer
from mtl.data.synth.looks import Look, Occluder, random_background, random_identity
from mtl.labels import AU_NAMES, NUM_AU

SIZE = 112
UPPER = ("AU1", "AU2", "AU4")
LOWER = ("AU12", "AU15", "AU20", "AU25")


def _renderer(seed: int, size: int = SIZE, grain: float = 0.0) -> FaceRenderer:
    identity = replace(random_identity(np.random.default_rng(seed)), glasses=False)
    return FaceRenderer(identity, np.full((size, size, 3), 128, np.uint8), grain_std=grain,
                        grain_rng=np.random.default_rng(seed))


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _only(name: str, value: float = 1.0) -> np.ndarray:
    au = np.zeros(NUM_AU)
    au[AU_NAMES.index(name)] = value
    return au


def _face_y(size: int) -> np.ndarray:
    """Face-unit y of each image row for an unposed face (eyes at 0, mouth near 0.5, chin at 1)."""
    return (np.arange(size) + 0.5 - size / 2) / (FACE_HALF_HEIGHT * size)


@pytest.mark.parametrize("size", [48, 112])
def test_render_gives_rgb_image_of_the_requested_size(size):
    rng = np.random.default_rng(0)
    renderer = FaceRenderer(random_identity(rng), random_background(rng, size), grain_std=3.0, grain_rng=rng)
    img = renderer.render(rng.random(NUM_AU), Look(angle=7, dx=0.03, scale=1.05, light=0.3, blur=1.0, grain=(5, 9)))
    assert img.mode == "RGB" and img.size == (size, size)


def test_render_is_deterministic():
    look = Look(angle=-5, light=0.2, light_angle=2.0, grain=(3, 4),
                occluder=Occluder("hand", 0.3, 0.7, 20, 0.3, (200, 160, 130)))
    au = np.linspace(0, 1, NUM_AU)
    first, second = (_pixels(_renderer(1, grain=4).render(au, look)) for _ in range(2))
    assert np.array_equal(first, second)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("name", AU_NAMES)
def test_each_au_visibly_changes_its_own_region(name, seed):
    renderer = _renderer(seed)
    diff = np.abs(_pixels(renderer.render(_only(name))) - _pixels(renderer.render(np.zeros(NUM_AU)))).sum(axis=2)
    assert (diff > 60).sum() >= 25, "too few pixels change strongly"
    per_row = diff.sum(axis=1)
    y = _face_y(SIZE)
    if name in UPPER:  # brows, forehead and upper lids
        assert per_row[y < 0.1].sum() > 0.95 * per_row.sum()
    elif name in LOWER:  # lips, lip corners and the folds beside them
        assert per_row[y > 0.15].sum() > 0.95 * per_row.sum()
    else:  # AU6: lower lids and cheeks, between the brows and the mouth
        assert per_row[(y > -0.1) & (y < 0.5)].sum() > 0.95 * per_row.sum()
        assert per_row[y < 0.1].sum() > 0.2 * per_row.sum() and per_row[y > 0.1].sum() > 0.2 * per_row.sum()


@pytest.mark.parametrize("name", AU_NAMES)
def test_au_effects_survive_downscaling_to_48_pixels(name):
    renderer = _renderer(5)
    small = [_pixels(renderer.render(au).resize((48, 48), Image.BILINEAR)) for au in (np.zeros(NUM_AU), _only(name))]
    assert (np.abs(small[1] - small[0]).sum(axis=2) > 40).sum() >= 8


def test_intensity_moves_the_face_gradually():
    renderer = _renderer(2)
    rest = _pixels(renderer.render(np.zeros(NUM_AU)))
    changes = [np.abs(_pixels(renderer.render(_only("AU25", v))) - rest).sum() for v in (0.25, 0.5, 1.0)]
    assert 0 < changes[0] < changes[1] < changes[2]


def test_pose_moves_the_face():
    renderer = _renderer(0)
    au = np.zeros(NUM_AU)
    base = _pixels(renderer.render(au))
    shifted = _pixels(renderer.render(au, Look(dx=0.1)))
    # a 0.1 shift is 11 px at 112: the shifted image matches the original rolled right by 11 px over the face
    assert np.abs(shifted[20:90, 30:80] - base[20:90, 19:69]).mean() < 0.2 * np.abs(shifted - base)[20:90, 30:80].mean()
    assert np.abs(_pixels(renderer.render(au, Look(angle=10))) - base).mean() > 3


def test_light_brightens_the_side_it_comes_from():
    renderer = _renderer(0)
    lit = _pixels(renderer.render(np.zeros(NUM_AU), Look(light=0.4, light_angle=0.0)))  # from the right
    flat = _pixels(renderer.render(np.zeros(NUM_AU)))
    ratio = lit / np.maximum(flat, 1)
    assert ratio[:, -10:].mean() > 1.25 and ratio[:, :10].mean() < 0.75


def test_occluder_covers_its_region_and_blur_softens():
    renderer = _renderer(0)
    au = np.zeros(NUM_AU)
    base = _pixels(renderer.render(au))
    covered = _pixels(renderer.render(au, Look(occluder=Occluder("bar", 0.5, 0.7, 0, 0.4, (0, 0, 255)))))
    changed = np.abs(covered - base).sum(axis=2) > 30
    assert changed[74:83, 40:72].mean() > 0.9 and changed[:60].mean() == 0
    blurred = _pixels(renderer.render(au, Look(blur=1.5)))
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.8 * np.abs(np.diff(base, axis=1)).mean()


def test_identities_differ():
    rng = np.random.default_rng(0)
    people = [random_identity(rng) for _ in range(20)]
    assert len({p.skin for p in people}) == 20
    assert len({p.hair_style for p in people}) >= 3
    assert np.std([p.face_width for p in people]) > 0.02 and np.std([p.eye_spacing for p in people]) > 0.01
