"""Face crops in the training layout, from a detection.

The training faces (`mtl.data.synth.face`, the cropped-aligned Aff-Wild2 layout) are R x R images with the eye
midpoint at the centre, the eye line level and the face half-height (chin to crown, without hair) equal to
FACE_HALF_HEIGHT x R. A detection gives the face height (its box height over the detector's `box_height`);
the eyes, when the detector finds them, give the centre and the rotation, else the centre is the box centre
moved up by the detector's `box_dy`. The square window of side (face height / 2) / FACE_HALF_HEIGHT around that
centre, rotated to a level eye line, is resampled to the stored size R (bilinear; borders repeat the edge)."""

from __future__ import annotations

import math

import numpy as np

from mtl.data.synth.face import FACE_HALF_HEIGHT
from mtl.extras import require
from mtl.serve.detect import PURPOSE, Detection, Detector


def crop_geometry(detection: Detection, detector: Detector) -> tuple[float, float, float, float]:
    """(centre x, centre y, window side, eye-line angle in degrees) of the training-layout window."""
    x, y, w, h = detection.box
    face_height = h / detector.box_height
    if detection.eyes:
        (lx, ly), (rx, ry) = detection.eyes
        cx, cy = (lx + rx) / 2, (ly + ry) / 2
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
    else:
        cx, cy = x + w / 2, y + h / 2 - detector.box_dy * face_height
        angle = 0.0
    return cx, cy, face_height / 2 / FACE_HALF_HEIGHT, angle


def align(rgb: np.ndarray, detection: Detection, detector: Detector, size: int) -> np.ndarray:
    """The detected face as a uint8 [size, size, 3] crop in the training layout."""
    cv2 = require("cv2", PURPOSE)
    cx, cy, side, angle = crop_geometry(detection, detector)
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    matrix[:, 2] += (size / 2 - cx, size / 2 - cy)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
