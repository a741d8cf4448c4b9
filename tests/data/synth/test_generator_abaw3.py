"""The synthetic s-Aff-Wild2 (protocol abaw3): exact layout, 12 AUs and 8 classes with Other, the 2020 generator's
imbalance and missingness; the ABAW 2020 output unchanged."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl.data.synth.expressions import label_model, simulate_labels
from mtl.data.synth.generator import plan_videos, synthesize, video_length
from tests.data.synth.test_generator import assert_two_person_videos_differ, crash_then_rerun
from mtl.labels import ABAW3, ABAW2020, TASKS
from mtl.errors import DataError

VIDEOS, FRAMES, SEED, SIZE = 14, 24, 5, 24
HEADER = "image,valence,arousal,expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
LINE = re.compile(r"^(v\d{3}(?:_left|_right)?)/(\d{5})\.jpg,(-5,-5|-?[01]\.\d{4},-?[01]\.\d{4}),(-1|[0-7]),"
                  r"(-1(?:,-1){11}|[01](?:,[01]){11})$")
FILES = {"train": "train_set.txt", "val": "validation_set.txt"}
MISSING_AU = ",".join(["-1"] * 12)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("abaw3") / "data"
    summary = synthesize(out, videos=VIDEOS, frames=FRAMES, seed=SEED, image_size=SIZE, progress=False,
                         protocol="abaw3")
    return out, summary


def _rows(out: Path) -> dict[str, list[list[str]]]:
    """split -> the fields of every line after the header."""
    return {split: [line.split(",") for line in (out / name).read_text().splitlines()[1:]]
            for split, name in FILES.items()}


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_exactly_s_affwild2(dataset):
    out, summary = dataset
    assert sorted(p.name for p in out.iterdir()) == ["cropped_aligned", "train_set.txt", "validation_set.txt"]
    assert not list(out.rglob("*.tmp"))
    plans = plan_videos(VIDEOS, SEED)
    assert sorted(p.name for p in (out / "cropped_aligned").iterdir()) == sorted(plan.name for plan in plans)
    for plan in plans:
        paths = sorted((out / "cropped_aligned" / plan.name).iterdir())
        assert paths and all(re.fullmatch(r"\d{5}\.jpg", p.name) for p in paths)
        with Image.open(paths[0]) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (SIZE, SIZE)
    assert summary["protocol"] == "abaw3"


def test_annotation_files_have_the_header_and_one_line_per_frame_in_order(dataset):
    out, _ = dataset
    plans = {plan.name: plan for plan in plan_videos(VIDEOS, SEED)}
    seen = {}
    for split, name in FILES.items():
        lines = (out / name).read_text().splitlines()
        assert lines[0] == HEADER == ",".join(("image", "valence", "arousal", "expression", *ABAW3.au_names))
        for line in lines[1:]:
            match = LINE.match(line)
            assert match and len(line.split(",")) == 16, line
            video, frame = match.group(1), int(match.group(2))
            assert plans[video].split == split  # split by video: a video is in one file only
            seen.setdefault(video, []).append(frame)
    assert set(seen) == set(plans)
    for video, frames in seen.items():
        assert frames == list(range(1, video_length(SEED, plans[video].slot, FRAMES) + 1))
    images = {str(p.relative_to(out / "cropped_aligned")) for p in (out / "cropped_aligned").rglob("*.jpg")}
    assert images <= {f"{video}/{frame:05d}.jpg" for video, frames in seen.items() for frame in frames}


def test_missing_markers_follow_the_annotated_tasks(dataset):
    out, summary = dataset
    plans = {plan.name: plan for plan in plan_videos(VIDEOS, SEED)}
    rows = [row for split_rows in _rows(out).values() for row in split_rows]
    missing = {"va": lambda r: r[1:3] == ["-5", "-5"], "expr": lambda r: r[3] == "-1",
               "au": lambda r: ",".join(r[4:]) == MISSING_AU}
    for task in TASKS:
        flags = [missing[task](row) for row in rows]
        assert 0 < sum(flags) < len(rows), task
        for row, flag in zip(rows, flags):  # a video not annotated for a task misses it on every frame
            if task not in plans[row[0].split("/")[0]].tasks:
                assert flag
        labelled = summary["labels"][task]["frames"]
        assert labelled["train"] + labelled["val"] == len(rows) - sum(flags)
    assert all("-1" not in row[4:] or missing["au"](row) for row in rows)  # all 12 AUs or none
    assert any(not any(missing[task](row) for task in TASKS) for row in rows)  # some frames carry all three


def test_two_person_videos_share_a_prefix_and_show_different_people(dataset):
    out, _ = dataset
    assert_two_person_videos_differ(out)


def test_labels_are_imbalanced_with_a_rare_other_class():
    model = label_model(ABAW3)
    tracks = [simulate_labels(np.random.default_rng([13, i]), 200, model) for i in range(150)]
    expr = np.concatenate([t.expr for t in tracks])
    share = dict(zip(ABAW3.expr_names, np.bincount(expr, minlength=8) / len(expr)))
    assert 0.35 < share["Neutral"] < 0.55 and share["Happiness"] > 0.1
    assert 0.02 < share["Other"] < 0.1 and all(share[name] > 0.005 for name in ABAW3.expr_names)
    au = np.concatenate([t.au for t in tracks])
    rate = dict(zip(ABAW3.au_names, au.mean(axis=0)))
    for name in ("AU7", "AU10", "AU23", "AU24", "AU26"):
        assert 0.02 < rate[name] < 0.3, name
    other = expr == ABAW3.expr_names.index("Other")
    smirk = np.concatenate([t.smirk for t in tracks])
    assert np.abs(smirk[other]).mean() > 0.4 and np.abs(smirk[~other]).mean() < 0.05
    assert all(len(set(np.sign(t.smirk[t.smirk != 0]))) <= 1 for t in tracks)  # one smirking side per person
    assert {1.0, -1.0} <= set(np.sign(smirk[smirk != 0]))


def test_the_other_class_reaches_the_files(tmp_path):
    synthesize(tmp_path / "d", videos=40, frames=16, seed=1, image_size=16, progress=False, protocol="abaw3")
    expr = [int(row[3]) for rows in _rows(tmp_path / "d").values() for row in rows]
    counts = np.bincount(np.array(expr) + 1, minlength=9)  # index 0: missing
    assert counts[0] > 0 and counts[8] > 0 and counts[1] == counts[1:].max()  # -1 present, Other present, Neutral


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    args = dict(videos=4, frames=6, image_size=24, progress=False, protocol="abaw3")
    synthesize(tmp_path / "a", seed=3, **args)
    synthesize(tmp_path / "b", seed=3, **args)
    synthesize(tmp_path / "c", seed=4, **args)
    a, b, c = (_tree(tmp_path / name) for name in "abc")
    assert a == b and len(a) > 20
    assert a != c


def test_a_crash_leaves_no_annotation_file_and_a_rerun_completes(tmp_path, monkeypatch):
    crash_then_rerun(tmp_path, monkeypatch, protocol="abaw3")
    assert _tree(tmp_path / "crashed") == _tree(tmp_path / "clean")


def test_a_single_video_still_writes_both_files(tmp_path):
    synthesize(tmp_path / "one", videos=1, frames=3, image_size=16, progress=False, protocol="abaw3")
    assert (tmp_path / "one" / "validation_set.txt").read_text() == HEADER + "\n"
    assert len((tmp_path / "one" / "train_set.txt").read_text().splitlines()) > 1


def test_unknown_protocol_is_refused(tmp_path):
    with pytest.raises(DataError, match="abaw9"):
        synthesize(tmp_path / "x", videos=2, frames=2, progress=False, protocol="abaw9")
    assert not (tmp_path / "x").exists()


def test_abaw2020_annotations_are_unchanged(tmp_path):
    """The ABAW 2020 output of a fixed draw, as written before ABAW3 was added (label text only: JPEG bytes
    depend on the image library)."""
    synthesize(tmp_path / "x", videos=7, frames=12, seed=4, image_size=16, progress=False)
    assert synthesize(tmp_path / "y", videos=1, frames=2, image_size=16, progress=False,
                      protocol=ABAW2020.name)["protocol"] == "abaw2020"
    digest = hashlib.sha256()
    for path in sorted((tmp_path / "x" / "annotations").rglob("*.txt")):
        digest.update(path.relative_to(tmp_path / "x").as_posix().encode() + b"\n" + path.read_bytes())
    assert digest.hexdigest() == "c424a041f643182463133de598b248f854563821072c1a340be39260e6b31130"
