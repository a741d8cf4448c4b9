import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl.errors import DataError
from mtl.data.sources import afew_va

SIZE = (120, 100)


def landmarks(left_eye, right_eye, mouth):
    """68 iBUG points: 36-41 on the left eye, 42-47 on the right eye, 48-67 on the mouth, the rest at the origin."""
    return [[0, 0]] * 36 + [list(left_eye)] * 6 + [list(right_eye)] * 6 + [list(mouth)] * 20


def entry(valence=0, arousal=0, marks=None):
    return {"valence": valence, "arousal": arousal, "landmarks": marks or landmarks((40, 50), (80, 50), (60, 80))}


def make_clip(root: Path, part: str, clip: str, frames: dict, dots=None) -> Path:
    """A clip folder with the JSON and one PNG per frame (black, with a red, green and blue 3×3 dot at `dots`)."""
    folder = root / part / clip
    folder.mkdir(parents=True)
    (folder / f"{clip}.json").write_text(json.dumps({"frames": frames, "video_id": clip}))
    for frame_id in frames:
        image = Image.new("RGB", SIZE, "black")
        for colour, (x, y) in zip([(255, 0, 0), (0, 255, 0), (0, 0, 255)], dots or []):
            image.paste(colour, (x - 1, y - 1, x + 2, y + 2))
        image.save(folder / f"{frame_id}.png")
    return folder / f"{clip}.json"


def read_all(root: Path):
    return [record for unit in afew_va.discover(root) for record in afew_va.read(unit)]


def test_labels_scaled_frames_ordered_and_videos_unique(tmp_path):
    make_clip(tmp_path, "01", "001", {"00002": entry(5, -10), "00000": entry(-2.5, 10), "00001": entry(0, 1)})
    make_clip(tmp_path, "01", "003", {"00000": entry(1, 1)})
    make_clip(tmp_path, "02", "002", {"00000": entry(2, 2)})
    make_clip(tmp_path, "02", "003", {"00000": entry(3, 3)})
    (tmp_path / "README.txt").write_text("not a part folder")
    units = afew_va.discover(tmp_path)
    assert [u.name for u in units] == ["001", "01_003", "002", "02_003"]
    records = read_all(tmp_path)
    assert [(r.video, r.frame, r.va) for r in records] == [
        ("001", 0, (-0.25, 1.0)),
        ("001", 1, (0.0, 0.1)),
        ("001", 2, (0.5, -1.0)),
        ("01_003", 0, (0.1, 0.1)),
        ("002", 0, (0.2, 0.2)),
        ("02_003", 0, (0.3, 0.3)),
    ]
    assert len({r.key for r in records}) == len(records)
    assert records[0].key == "afew_va/001/00000"
    assert records[0].image == str(tmp_path / "01" / "001" / "00000.png")
    assert all(r.source == "afew_va" and r.split == "train" and r.au is None and r.expr is None for r in records)


def test_level_eyes_hand_computed_crop(tmp_path):
    make_clip(tmp_path, "01", "001", {"00000": entry(marks=landmarks((10, 20), (41, 20), (25, 46)))})
    (record,) = read_all(tmp_path)
    # Edge coordinates (index + 0.5): eyes (10.5, 20.5) and (41.5, 20.5), eye distance 31, mouth (25.5, 46.5),
    # eye-to-mouth distance ~26.0, so side 62 centred at (25.75, 33.5): left -4.75 -> -5, top 2.5 -> 3.
    assert record.rotate == 0.0
    assert record.crop == (-5, 3, 57, 65)


def channel_centroids(image: Image.Image) -> list[tuple[float, float]]:
    """(x, y) in edge coordinates of the red, green and blue dots."""
    pixels = np.asarray(image, dtype=np.float64)
    ys, xs = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
    out = []
    for c in range(3):
        w = pixels[..., c]
        out.append(((w * xs).sum() / w.sum() + 0.5, (w * ys).sum() / w.sum() + 0.5))
    return out


@pytest.mark.parametrize(
    "left_eye, right_eye, mouth",
    [((40, 50), (80, 30), (66, 80)), ((30, 30), (70, 50), (45, 75)), ((50, 20), (52, 60), (30, 45))],
)
def test_prepare_transform_levels_the_eyes_and_centres_the_face(tmp_path, left_eye, right_eye, mouth):
    marks = landmarks(left_eye, right_eye, mouth)
    make_clip(tmp_path, "01", "001", {"00000": entry(marks=marks)}, dots=[left_eye, right_eye, mouth])
    (record,) = read_all(tmp_path)
    with Image.open(record.image) as image:
        face = image.rotate(record.rotate, resample=Image.BILINEAR).crop(record.crop)  # what prepare does
    (lx, ly), (rx, ry), (mx, my) = channel_centroids(face)
    eye_distance = math.dist(left_eye, right_eye)
    eyes = ((left_eye[0] + right_eye[0]) / 2, (left_eye[1] + right_eye[1]) / 2)
    side = 2 * max(eye_distance, math.dist(eyes, mouth))
    assert face.size[0] == face.size[1] == round(side)
    assert ly == pytest.approx(ry, abs=0.3)  # eye line level
    assert rx - lx == pytest.approx(eye_distance, abs=0.3)  # left eye stays left (no flip)
    assert (lx + rx) / 2 + mx == pytest.approx(side, abs=1.0)  # halfway between eye centre and mouth: the centre
    assert (ly + ry) / 2 + my == pytest.approx(side, abs=1.0)


def test_clip_without_readable_images_yields_unaligned_records(tmp_path):
    path = make_clip(tmp_path, "01", "001", {"00000": entry(), "00001": entry()})
    for png in path.parent.glob("*.png"):
        png.unlink()
    (path.parent / "00001.png").write_bytes(b"not an image")
    records = read_all(tmp_path)
    assert [(r.frame, r.rotate, r.crop) for r in records] == [(0, 0.0, None), (1, 0.0, None)]


def test_degenerate_landmarks_are_an_error_even_without_images(tmp_path):
    path = make_clip(tmp_path, "01", "001", {"00000": entry(marks=[[5, 5]] * 68)})
    (path.parent / "00000.png").unlink()
    with pytest.raises(DataError, match=re.escape(f"{path}: frame 00000: landmarks span less than a pixel")):
        read_all(tmp_path)


def test_size_comes_from_the_first_frame_that_opens(tmp_path):
    path = make_clip(tmp_path, "01", "001", {"00000": entry(), "00001": entry()})
    (path.parent / "00000.png").unlink()
    records = read_all(tmp_path)
    assert records[0].crop == records[1].crop is not None


@pytest.mark.parametrize(
    "frames, message",
    [
        ({"00001": entry(10.5, 0)}, "frame 00001: valence 10.5 is not a number in [-10, 10]"),
        ({"00001": entry(0, -11)}, "frame 00001: arousal -11 is not a number in [-10, 10]"),
        ({"00001": entry("3", 0)}, "frame 00001: valence '3' is not a number in [-10, 10]"),
        ({"00001": entry(True, 0)}, "frame 00001: valence True is not a number in [-10, 10]"),
        ({"00001": {"valence": 1, "landmarks": []}}, "frame 00001: expected an object with valence, arousal"),
        ({"00001": entry(marks=[[0, 0]] * 67)}, "frame 00001: expected 68 finite [x, y] landmarks, got shape (67, 2)"),
        ({"00001": entry(marks=[[0, 0, 0]] * 68)}, "frame 00001: expected 68 finite [x, y] landmarks, got shape (68,"),
        ({"00001": entry(marks=[[0, "a"]] * 68)}, "frame 00001: landmarks are not a list of [x, y] numbers"),
        ({"00001": entry(marks=[[5, 5]] * 68)}, "frame 00001: landmarks span less than a pixel"),
        ({"first": entry()}, "frame id 'first' is not a number"),
        ({"1": entry(), "00001": entry()}, "two frame ids name the same frame number"),
    ],
)
def test_bad_annotation_names_file_and_frame(tmp_path, frames, message):
    path = make_clip(tmp_path, "01", "001", frames)
    with pytest.raises(DataError, match=re.escape(f"{path}: {message}")):
        read_all(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"video_id": "001"}', '{"frames": [1]}'])
def test_unparsable_json_names_the_file(tmp_path, text):
    path = make_clip(tmp_path, "01", "001", {})
    path.write_text(text)
    with pytest.raises(DataError, match=re.escape(f"{path}: ")):
        read_all(tmp_path)


def test_missing_json_or_root(tmp_path):
    path = make_clip(tmp_path, "01", "001", {"00000": entry()})
    path.unlink()
    with pytest.raises(DataError, match=re.escape(f"{path}: missing file")):
        afew_va.discover(tmp_path)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope'}: missing folder")):
        afew_va.discover(tmp_path / "nope")
