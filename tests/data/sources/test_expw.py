import re
from pathlib import Path

import pytest
from PIL import Image

from mtl.labels import EXPR_NAMES
from mtl.errors import DataError
from mtl.data.sources import expw
from mtl.data.sources.base import SOURCES

# image_name face_id top left right bottom confidence expression (ExpW ids: 0 angry 3 happy 5 surprise 6 neutral)
LINES = [
    "party.jpg 0 10 20 50 40 85.5 3",
    "party.jpg 1 5 60 90 45 60.1 6",
    "solo.jpg 0 0 0 30 30 99.0 0",
    "missing.jpg 0 1 2 3 4 50.0 5",  # listed although the image file is absent: readers do not open images
]


def make_expw(root: Path, lines=LINES) -> Path:
    (root / "label").mkdir(parents=True)
    (root / "image" / "origin").mkdir(parents=True)
    (root / "label" / "label.lst").write_text("\n".join(lines) + "\n")
    party = Image.new("RGB", (100, 60), "black")
    party.paste((255, 0, 0), (20, 10, 50, 40))  # face 0: left 20, top 10, right 50, bottom 40
    party.paste((0, 255, 0), (60, 5, 90, 45))  # face 1
    party.save(root / "image" / "origin" / "party.jpg", quality=100, subsampling=0)
    Image.new("RGB", (32, 32), "gray").save(root / "image" / "origin" / "solo.jpg")
    return root


def read_all(root: Path):
    return [record for unit in expw.discover(root) for record in expw.read(unit)]


def test_records_labels_crops_and_unique_keys(tmp_path):
    records = read_all(make_expw(tmp_path))
    assert [(r.video, r.frame, r.expr, r.crop) for r in records] == [
        ("party", 0, EXPR_NAMES.index("Happiness"), (20, 10, 50, 40)),
        ("party", 1, EXPR_NAMES.index("Neutral"), (60, 5, 90, 45)),
        ("solo", 0, EXPR_NAMES.index("Anger"), (0, 0, 30, 30)),
        ("missing", 0, EXPR_NAMES.index("Surprise"), (2, 1, 3, 4)),
    ]
    assert [r.key for r in records] == ["expw/party/00000", "expw/party/00001", "expw/solo/00000", "expw/missing/00000"]
    assert all(r.source == "expw" and r.split == "train" and r.au is None and r.va is None for r in records)
    assert records[0].image == str(tmp_path / "image" / "origin" / "party.jpg")
    assert records[3].image == str(tmp_path / "image" / "origin" / "missing.jpg")


def test_crop_box_cuts_the_face(tmp_path):
    face0, face1 = read_all(make_expw(tmp_path))[:2]
    with Image.open(face0.image) as image:
        assert image.crop(face0.crop).getextrema()[0][0] > 200  # red channel high everywhere: the whole box is face 0
        assert image.crop(face1.crop).getextrema()[1][0] > 200  # green everywhere: face 1


def test_full_remap_of_expw_ids(tmp_path):
    lines = [f"img{i}.jpg 0 0 0 10 10 1.0 {i}" for i in range(7)]  # angry disgust fear happy sad surprise neutral
    records = read_all(make_expw(tmp_path, lines))
    expected = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral"]
    assert [EXPR_NAMES[r.expr] for r in records] == expected


def test_chunks_cover_every_line_once(tmp_path, monkeypatch):
    lines = [f"img{i:02d}.jpg {i % 3} 0 0 10 10 1.0 {i % 7}" for i in range(11)]
    root = make_expw(tmp_path, lines)
    whole = read_all(root)
    monkeypatch.setattr(expw, "CHUNK_LINES", 4)
    units = expw.discover(root)
    assert [u.args[1:3] for u in units] == [(1, 4), (5, 8), (9, 11)]
    assert [u.name for u in units] == ["label.lst:1-4", "label.lst:5-8", "label.lst:9-11"]
    assert read_all(root) == whole and len(whole) == 11
    assert SOURCES.get("expw").read is expw.read


def test_images_sharing_a_stem_get_their_full_names(tmp_path):
    lines = ["a.jpg 0 0 0 10 10 1.0 3", "a.png 0 0 0 10 10 1.0 3", "b.jpg 0 0 0 10 10 1.0 3"]
    records = read_all(make_expw(tmp_path, lines))
    assert [r.video for r in records] == ["a.jpg", "a.png", "b"]
    assert len({r.key for r in records}) == 3


@pytest.mark.parametrize(
    "bad, message",
    [
        ("x.jpg 0 10 20 50 40 85.5", "expected 8 fields, got 7"),
        ("x.jpg 0 10 20 50 40 85.5 3 9", "expected 8 fields, got 9"),
        ("x.jpg zero 10 20 50 40 85.5 3", "face_id 'zero' is not an integer"),
        ("x.jpg 0 10 20.5 50 40 85.5 3", "left '20.5' is not an integer"),
        ("x.jpg 0 10 20 50 40 high 3", "confidence 'high' is not a number"),
        ("x.jpg 0 10 20 50 40 85.5 7", "expression 7 is not an ExpW id 0..6"),
        ("x.jpg 0 10 20 50 40 85.5 -1", "expression -1 is not an ExpW id 0..6"),
        ("x.jpg -1 10 20 50 40 85.5 3", "face_id -1 is negative"),
        ("x.jpg 0 10 50 50 40 85.5 3", "empty face box left=50 top=10 right=50 bottom=40"),
        ("x.jpg 0 40 20 50 40 85.5 3", "empty face box left=20 top=40 right=50 bottom=40"),
        ("party.jpg 1 0 0 10 10 1.0 3", "face 1 of party.jpg already on line 2"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    root = make_expw(tmp_path, LINES[:2] + ["", bad])  # a blank line is skipped but still counted
    with pytest.raises(DataError, match=re.escape(f"{root / 'label' / 'label.lst'}:4: {message}")):
        read_all(root)


@pytest.mark.parametrize("missing", ["label/label.lst", "image/origin"])
def test_missing_file_or_folder(tmp_path, missing):
    root = make_expw(tmp_path)
    target = root / missing
    target.unlink() if target.is_file() else target.rename(root / "elsewhere")
    with pytest.raises(DataError, match=re.escape(str(target))):
        expw.discover(root)
