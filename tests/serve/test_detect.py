"""The embedded face detectors on synthetic scenes: faces found where they are, nothing on face-free scenes;
the training-layout crop; detector choice by name or file."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.errors import ConfigError
from mtl.serve.align import align, crop_geometry
from mtl.serve.detect import DETECTORS, make_detector, match, measure
from tests.serve.media_fixtures import FacePlacement, random_scene, render_scene

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def mtcnn():
    return make_detector("mtcnn")


def test_two_faces_found_and_no_false_positive(mtcnn):
    scene, boxes = render_scene(200, [FacePlacement(55, 70, 22, 0, 1), FacePlacement(145, 120, 18, 12, 2)], 3)
    found = mtcnn(scene)
    assert len(match(boxes, [d.box for d in found])) == 2 and len(found) == 2
    assert all(d.eyes is not None and d.eyes[0][0] < d.eyes[1][0] for d in found)
    empty, _ = render_scene(200, [], 4)
    assert mtcnn(empty) == []


def test_measure_on_a_small_set(mtcnn):
    rng = np.random.default_rng(5)
    samples = [random_scene(rng, 160, count, unit_range=(16, 28), max_angle=10) for count in (0, 1, 2, 1, 0, 2)]
    scores = measure(mtcnn, samples)
    assert scores["faces"] == sum(len(b) for _, b in samples) and scores["face_free_images"] == 2
    assert scores["recall"] >= 0.8 and scores["false_per_image"] <= 0.2


def test_aligned_crop_is_in_the_training_layout(mtcnn):
    scene, (box,) = render_scene(200, [FacePlacement(90, 100, 25, 15, 1)], 3)
    (found,) = mtcnn(scene)
    cx, cy, side, angle = crop_geometry(found, mtcnn)
    assert abs(cx - 90) < 4 and abs(cy - 100) < 4 and abs(angle + 15) < 10  # drawn counter-clockwise; MTCNN's eyes are coarse (-8 deg measured)
    assert abs(side - 25 / 0.36) / (25 / 0.36) < 0.2
    crop = align(scene, found, mtcnn, 112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8


def test_detector_choice():
    assert {"mtcnn", "haar"} <= set(DETECTORS.names())
    assert make_detector("haar").name == "haar"
    with pytest.raises(ConfigError, match="unknown face detector 'nope'"):
        make_detector("nope")
    with pytest.raises(FileNotFoundError, match="no such detector model file"):
        make_detector("/nonexistent/yunet.onnx")
