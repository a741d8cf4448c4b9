"""The face motions of ABAW3's extra AUs and the one-sided look of its Other class, each in its own region."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mtl.data.synth.face import FACE_HALF_HEIGHT, MOTIONS, FaceRenderer
from mtl.data.synth.looks import Look, random_identity
from mtl.labels import ABAW3, AU_NAMES

SIZE = 112
NEW = ("AU7", "AU10", "AU23", "AU24", "AU26")  # the AUs ABAW3 adds to ABAW 2020's
REGION = {  # face-unit rows that hold (almost) all of the change: the eyes; nose wings to chin; the mouth
    "AU7": (-0.2, 0.25), "AU10": (0.1, 1.2), "AU23": (0.15, 1.2), "AU24": (0.15, 1.2), "AU26": (0.15, 1.2),
}


def _renderer(seed: int, names=ABAW3.au_names, size: int = SIZE) -> FaceRenderer:
    identity = replace(random_identity(np.random.default_rng(seed)), glasses=False)
    return FaceRenderer(identity, np.full((size, size, 3), 128, np.uint8), au_names=names)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _only(name: str, value: float = 1.0, names=ABAW3.au_names) -> np.ndarray:
    au = np.zeros(len(names))
    au[names.index(name)] = value
    return au


def _diff(renderer: FaceRenderer, au: np.ndarray, smirk: float = 0.0) -> np.ndarray:
    rest = _pixels(renderer.render(np.zeros(len(renderer.au_names))))
    return np.abs(_pixels(renderer.render(au, smirk=smirk)) - rest).sum(axis=2)


def _face_y(size: int) -> np.ndarray:
    """Face-unit y of each image row for an unposed face (eyes at 0, mouth near 0.5, chin at 1)."""
    return (np.arange(size) + 0.5 - size / 2) / (FACE_HALF_HEIGHT * size)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("name", NEW)
def test_each_new_au_visibly_changes_its_own_region(name, seed):
    diff = _diff(_renderer(seed), _only(name))
    assert (diff > 60).sum() >= 25, "too few pixels change strongly"
    per_row = diff.sum(axis=1)
    y = _face_y(SIZE)
    low, high = REGION[name]
    assert per_row[(y > low) & (y < high)].sum() > 0.95 * per_row.sum()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lid_tightener_stays_on_the_eyes_unlike_the_cheek_raiser(seed):
    renderer = _renderer(seed)
    y = _face_y(SIZE)
    cheeks = (y > 0.12) & (y < 0.45)  # below the lower lids, where AU6 lifts the cheeks
    au7, au6 = (_diff(renderer, _only(name)).sum(axis=1) for name in ("AU7", "AU6"))
    assert au7[cheeks].sum() < 0.02 * au7.sum() and au6[cheeks].sum() > 0.15 * au6.sum()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_jaw_drop_opens_wider_than_lips_part_and_lowers_the_chin(seed):
    renderer = _renderer(seed)
    y = _face_y(SIZE)
    au26, au25 = (_diff(renderer, _only(name)) for name in ("AU26", "AU25"))
    assert (au26 > 60).sum() > 1.3 * (au25 > 60).sum()
    chin = y > 0.85
    assert au26.sum(axis=1)[chin].sum() > 0.1 * au26.sum() and au25.sum(axis=1)[chin].sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("name", NEW)
def test_new_au_effects_survive_downscaling_to_48_pixels(name, seed):
    renderer = _renderer(seed)
    small = [_pixels(renderer.render(au).resize((48, 48), Image.BILINEAR))
             for au in (np.zeros(ABAW3.num_au), _only(name))]
    assert (np.abs(small[1] - small[0]).sum(axis=2) > 40).sum() >= 8


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("smirk", [1.0, -1.0])
def test_the_other_look_is_one_sided_brow_and_mouth(seed, smirk):
    diff = _diff(_renderer(seed), np.zeros(ABAW3.num_au), smirk)
    assert (diff > 60).sum() >= 50
    per_col, per_row = diff.sum(axis=0), diff.sum(axis=1)
    named_side = per_col[SIZE // 2:] if smirk > 0 else per_col[:SIZE // 2]  # +1: the face's right (image right)
    assert named_side.sum() > 0.95 * per_col.sum()
    y = _face_y(SIZE)
    assert per_row[y < 0].sum() > 0.2 * per_row.sum() and per_row[y > 0.3].sum() > 0.1 * per_row.sum()


def test_the_other_look_differs_from_smiling_and_raising_both_brows():
    renderer = _renderer(0)
    both = np.zeros(ABAW3.num_au)
    both[[ABAW3.au_names.index("AU2"), ABAW3.au_names.index("AU12")]] = 1.0
    smirk, symmetric = (_pixels(renderer.render(au, smirk=s)) for au, s in ((np.zeros(ABAW3.num_au), 1.0), (both, 0)))
    assert np.abs(smirk - smirk[:, ::-1]).mean() > 2 * np.abs(symmetric - symmetric[:, ::-1]).mean()


def test_an_au_at_rest_draws_the_same_face_whatever_the_protocol():
    """ABAW 2020's renderer and ABAW3's draw the same pixels when the AUs only one of them has are at rest."""
    look = Look(angle=4, dx=0.02, gaze=0.3, light=0.2, light_angle=1.0)
    rng = np.random.default_rng(3)
    shared = [name for name in AU_NAMES if name in ABAW3.au_names]
    for seed in range(3):
        values = dict(zip(shared, rng.uniform(0, 1.2, len(shared))))
        old, new = (np.array([values.get(name, 0.0) for name in names]) for names in (AU_NAMES, ABAW3.au_names))
        assert np.array_equal(_pixels(_renderer(seed, AU_NAMES).render(old, look)),
                              _pixels(_renderer(seed).render(new, look)))


def test_renderer_refuses_unknown_aus_and_wrong_widths():
    assert set(ABAW3.au_names) <= set(MOTIONS) and set(AU_NAMES) <= set(MOTIONS)
    with pytest.raises(ValueError, match="AU9"):
        _renderer(0, ("AU1", "AU9"))
    with pytest.raises(ValueError, match="12 AU intensities"):
        _renderer(0).render(np.zeros(len(AU_NAMES)))
