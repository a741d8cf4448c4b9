"""Scenes (mtl/data/synth/scenes.py): the true box of a turned face, faces placed apart and inside the image,
the same generator state drawing the same scene."""

import math

import numpy as np
import pytest

from mtl.data.synth.scenes import FacePlacement, random_placements, random_scene, true_box


@pytest.mark.parametrize("angle", [0.0, 20.0, 45.0, -70.0, 90.0])
def test_the_true_box_is_the_tightest_box_of_the_turned_oval(angle):
    face, width = FacePlacement(100, 80, 20, angle), 0.8
    t, a = np.linspace(0, 2 * np.pi, 20001), math.radians(angle)
    x, y = width * face.unit * np.cos(t), face.unit * np.sin(t)
    xs, ys = face.cx + x * math.cos(a) + y * math.sin(a), face.cy - x * math.sin(a) + y * math.cos(a)
    box = true_box(face, width)
    assert box == pytest.approx((xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()), abs=1e-3)


def test_a_quarter_turn_swaps_the_box_sides():
    upright, turned = true_box(FacePlacement(0, 0, 10), 0.75), true_box(FacePlacement(0, 0, 10, 90), 0.75)
    assert upright[2:] == pytest.approx((15, 20)) and turned[2:] == pytest.approx((20, 15))


def test_placed_faces_are_inside_apart_and_within_the_angle():
    faces = random_placements(np.random.default_rng(3), 320, 3, (14, 40), max_angle=25)
    assert len(faces) == 3
    for f in faces:
        assert 1.6 * f.unit <= f.cx <= 320 - 1.6 * f.unit and 1.6 * f.unit <= f.cy <= 320 - 1.6 * f.unit
        assert 14 <= f.unit <= 40 and abs(f.angle) <= 25
    assert all(math.hypot(f.cx - g.cx, f.cy - g.cy) > 2.6 * (f.unit + g.unit) for f in faces for g in faces if f != g)
    assert len(random_placements(np.random.default_rng(3), 100, 3, (30, 31))) == 1  # room for one: fewer, not overlaps


def test_the_same_generator_state_draws_the_same_scene():
    (a, boxes_a), (b, boxes_b) = (random_scene(np.random.default_rng(7), 96, 1, (12, 16)) for _ in range(2))
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8 and len(boxes_a) == 1
    assert np.array_equal(a, b) and boxes_a == boxes_b
