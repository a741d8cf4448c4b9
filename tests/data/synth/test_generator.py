"""The synthetic Aff-Wild2 dataset: exact ABAW-2020 layout, realistic label statistics, incomplete annotation."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl.labels import AU_NAMES, EXPR_NAMES, HEADERS, NUM_AU, TASKS
from mtl.data.synth.generator import (SET_DIRS, SPLIT_DIRS, plan_videos, runs, simulate_labels, synthesize, video_length,
                       write_video)

VIDEOS, FRAMES, SEED, SIZE = 16, 60, 7, 40
LINE = {
    "au": re.compile(r"^(-1(,-1){7}|[01](,[01]){7})$"),
    "expr": re.compile(r"^(-1|[0-6])$"),
    "va": re.compile(r"^(-5,-5|-?[01]\.\d{4},-?[01]\.\d{4})$"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, synthesize(out, videos=VIDEOS, frames=FRAMES, seed=SEED, image_size=SIZE, progress=False)


def _annotations(out: Path) -> dict[tuple[str, str, str], list[str]]:
    """(task, split, video) -> lines of every annotation file."""
    found = {}
    for task in TASKS:
        for split, split_dir in SPLIT_DIRS.items():
            for path in (out / "annotations" / SET_DIRS[task] / split_dir).glob("*.txt"):
                found[task, split, path.stem] = path.read_text().splitlines()
    return found


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_exactly_affwild2(dataset):
    out, _ = dataset
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "cropped_aligned"]
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["AU_Set", "EXPR_Set", "VA_Set"]
    for set_dir in SET_DIRS.values():
        assert sorted(p.name for p in (out / "annotations" / set_dir).iterdir()) == ["Training_Set", "Validation_Set"]
    assert not list(out.rglob("*.tmp"))
    names = sorted(p.name for p in (out / "cropped_aligned").iterdir())
    assert names == sorted(plan.name for plan in plan_videos(VIDEOS, SEED))
    assert all(re.fullmatch(r"v\d{3}(_left|_right)?", name) for name in names)


def test_annotation_files_have_header_and_one_line_per_frame(dataset):
    out, _ = dataset
    plans = {plan.name: plan for plan in plan_videos(VIDEOS, SEED)}
    files = _annotations(out)
    assert files
    for (task, split, video), lines in files.items():
        plan = plans[video]
        assert plan.split == split and task in plan.tasks
        assert lines[0] == HEADERS[task]
        assert len(lines) - 1 == video_length(SEED, plan.slot, FRAMES)
        assert all(LINE[task].match(line) for line in lines[1:]), (task, video)
    assert {(task, plan.split, name) for name, plan in plans.items() for task in plan.tasks} == set(files)


def test_images_are_numbered_from_one_and_readable(dataset):
    out, _ = dataset
    for plan in plan_videos(VIDEOS, SEED):
        paths = sorted((out / "cropped_aligned" / plan.name).iterdir())
        assert all(re.fullmatch(r"\d{5}\.jpg", p.name) for p in paths)
        numbers = [int(p.stem) for p in paths]
        assert min(numbers) >= 1 and max(numbers) <= video_length(SEED, plan.slot, FRAMES)
        with Image.open(paths[0]) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (SIZE, SIZE)


def test_some_frames_have_no_image_but_keep_their_label_line(dataset):
    out, summary = dataset
    jpgs = len(list((out / "cropped_aligned").rglob("*.jpg")))
    assert summary["images"] == jpgs
    assert summary["frames_without_image"] == summary["frames"] - jpgs
    assert 0 < summary["frames_without_image"] < 0.08 * summary["frames"]


def test_invalid_markers_are_scattered_and_rare(dataset):
    out, summary = dataset
    lines = [(task, line) for (task, _, _), body in _annotations(out).items() for line in body[1:]]
    invalid = sum(line in ("-1", "-5,-5", ",".join(["-1"] * NUM_AU)) for _, line in lines)
    assert 0 < invalid < 0.08 * len(lines)
    assert invalid == sum(summary["labels"][task]["invalid"] for task in TASKS)
    mask = np.concatenate([runs(np.random.default_rng(i), 500, 0.03, 1, 8) for i in range(100)])
    assert 0.015 < mask.mean() < 0.045


def test_summary_counts_match_the_files(dataset):
    out, summary = dataset
    plans = plan_videos(VIDEOS, SEED)
    assert summary["videos"] == {split: sum(p.split == split for p in plans) for split in ("train", "val")}
    assert summary["frames"] == sum(video_length(SEED, p.slot, FRAMES) for p in plans)
    files = _annotations(out)
    for task in TASKS:
        for split in ("train", "val"):
            annotated = [body for (t, s, _), body in files.items() if t == task and s == split]
            assert summary["labels"][task]["videos"][split] == len(annotated)
    train_tasks = {}
    for task, split, video in files:
        if split == "train":
            train_tasks.setdefault(video, set()).add(task)
    by_count = [sum(len(tasks) == k for tasks in train_tasks.values()) for k in (1, 2, 3)]
    assert summary["task_counts"] is None and summary["val_videos"] == summary["videos"]["val"]
    assert summary["train_task_counts"] == {"videos": by_count, "target": None, "exact": None,
                                            "shares": [round(n / len(train_tasks), 6) for n in by_count]}
    assert summary["seconds"] > 0 and summary["frames_per_second"] > 0


def test_two_person_videos_are_separate_people(dataset):
    out, _ = dataset
    assert_two_person_videos_differ(out)


def assert_two_person_videos_differ(out):
    """Every `<name>_left` face folder has its `<name>_right` twin, and their first common frames differ."""
    lefts = sorted((out / "cropped_aligned").glob("*_left"))
    assert lefts
    for left in lefts:
        right = left.with_name(left.name.replace("_left", "_right"))
        assert right.is_dir()
        first = sorted(set(p.name for p in left.iterdir()) & set(p.name for p in right.iterdir()))[0]
        a, b = (np.asarray(Image.open(d / first), dtype=np.float32) for d in (left, right))
        assert np.abs(a - b).mean() > 10


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    args = dict(videos=5, frames=8, image_size=32, progress=False)
    synthesize(tmp_path / "a", seed=3, **args)
    synthesize(tmp_path / "b", seed=3, **args)
    synthesize(tmp_path / "c", seed=4, **args)
    a, b, c = (_tree(tmp_path / name) for name in "abc")
    assert a == b
    assert a != c


def test_refuses_a_non_empty_folder_and_bad_arguments(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        synthesize(tmp_path, videos=2, frames=2, progress=False)
    for bad in (dict(videos=0), dict(frames=0), dict(seed=-1), dict(image_size=8), dict(videos=2.5)):
        with pytest.raises(ValueError):
            synthesize(tmp_path / "new", **{"videos": 2, "frames": 2, "progress": False, **bad})


def test_progress_goes_to_stderr(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MTL_PROGRESS_SECONDS", "0")  # without a terminal: a line per update at this interval
    synthesize(tmp_path / "p", videos=2, frames=3, image_size=24, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "synth: 2/2 videos" in captured.err


@pytest.mark.parametrize("videos", [1, 2, 3, 4, 10, 24, 61])
def test_splits_have_train_and_validation_videos(videos):
    plans = plan_videos(videos, seed=0)
    assert len(plans) == videos and len({p.name for p in plans}) == videos
    val = [p for p in plans if p.split == "val"]
    assert len(val) == (0 if videos == 1 else max(1, round(0.22 * videos)))
    assert all(p.tasks == TASKS for p in val)
    train = [p for p in plans if p.split == "train"]
    assert train and all(any(task in p.tasks for p in train) for task in TASKS)
    pairs = [p for p in plans if p.name.endswith(("_left", "_right"))]
    assert (len(pairs) > 0) == (videos >= 4)
    for p in pairs:  # both people of a video share its split and tasks
        other = next(q for q in plans if q.slot == p.slot and q.person != p.person)
        assert (other.split, other.tasks) == (p.split, p.tasks)


def test_most_training_videos_miss_a_task():
    train = [p for seed in range(5) for p in plan_videos(100, seed) if p.split == "train"]
    share = np.bincount([len(p.tasks) for p in train], minlength=4)[1:] / len(train)
    assert abs(share[0] - 0.6) < 0.08 and abs(share[1] - 0.3) < 0.08 and abs(share[2] - 0.1) < 0.06
    assert plan_videos(24, 1) == plan_videos(24, 1) and plan_videos(24, 1) != plan_videos(24, 2)


def test_video_lengths_vary_around_the_mean():
    lengths = np.array([video_length(0, slot, 200) for slot in range(200)])
    assert lengths.min() >= 100 and lengths.max() <= 300 and lengths.std() > 40
    assert abs(lengths.mean() - 200) < 10
    assert video_length(0, 0, 1) == 1


@pytest.fixture(scope="module")
def tracks():
    return [simulate_labels(np.random.default_rng([11, i]), 200) for i in range(150)]


def test_expression_distribution_is_imbalanced_like_affwild2(tracks):
    expr = np.concatenate([t.expr for t in tracks])
    share = dict(zip(EXPR_NAMES, np.bincount(expr, minlength=len(EXPR_NAMES)) / len(expr)))
    assert 0.4 < share["Neutral"] < 0.6
    assert 0.005 < share["Fear"] < 0.06 and 0.005 < share["Disgust"] < 0.06
    assert share["Happiness"] > 0.1


def test_au_rates_are_imbalanced_and_follow_expressions(tracks):
    au = np.concatenate([t.au for t in tracks])
    expr = np.concatenate([t.expr for t in tracks])
    rate = dict(zip(AU_NAMES, au.mean(axis=0)))
    for rare in ("AU2", "AU15", "AU20"):
        assert 0.005 < rate[rare] < 0.09, rare
    for common in ("AU6", "AU12", "AU25"):
        assert rate[common] > 0.15, common
    happy, sad = expr == EXPR_NAMES.index("Happiness"), expr == EXPR_NAMES.index("Sadness")
    au12, au15 = AU_NAMES.index("AU12"), AU_NAMES.index("AU15")
    assert au[happy, au12].mean() > 0.7 and au[~happy, au12].mean() < 0.15
    assert au[sad, au15].mean() > 3 * au[~sad, au15].mean()


def test_va_is_central_and_follows_expressions(tracks):
    va = np.concatenate([t.va for t in tracks])
    expr = np.concatenate([t.expr for t in tracks])
    assert np.all(np.abs(va) <= 1)
    assert (np.abs(va) < 0.4).all(axis=1).mean() > 0.6
    assert va.std(axis=0).min() > 0.1 and np.abs(va).max() > 0.6
    mean = {name: va[expr == k].mean(axis=0) for k, name in enumerate(EXPR_NAMES)}
    assert mean["Happiness"][0] > 0.2 and mean["Sadness"][0] < -0.15 and mean["Anger"][1] > 0.25
    assert np.abs(mean["Neutral"]).max() < 0.15


def test_labels_change_smoothly_along_a_video(tracks):
    expr_changes = np.mean([np.mean(t.expr[1:] != t.expr[:-1]) for t in tracks])
    assert 1 / 16 < expr_changes < 1 / 8  # segments of 5-15 frames (a few merge when the expression repeats)
    au_changes = np.mean([np.mean(t.au[1:] != t.au[:-1]) for t in tracks])
    assert au_changes < 0.03
    step = np.mean([np.abs(np.diff(t.va, axis=0)).mean() for t in tracks])
    spread = np.concatenate([t.va for t in tracks]).std()
    assert step < 0.12 * spread  # a frame-to-frame step is about a tenth of the spread


def test_a_video_comes_out_the_same_when_written_alone(dataset, tmp_path):
    out, _ = dataset
    plan = plan_videos(VIDEOS, SEED)[-1]
    write_video(tmp_path, plan, SEED, FRAMES, SIZE)
    alone = _tree(tmp_path)
    assert alone and all((out / name).read_bytes() == data for name, data in alone.items())


def test_a_crash_leaves_no_annotations_and_a_rerun_completes(tmp_path, monkeypatch):
    crash_then_rerun(tmp_path, monkeypatch)


def crash_then_rerun(tmp_path, monkeypatch, **options):
    """A KeyboardInterrupt at the third video leaves only the staging folder; a rerun completes."""
    import mtl.data.synth.generator

    args = dict(videos=4, frames=6, seed=2, image_size=24, progress=False, **options)
    synthesize(tmp_path / "clean", **args)
    real_write, calls = mtl.data.synth.generator.write_video, []

    def crash_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_write(*a, **k)

    monkeypatch.setattr(mtl.data.synth.generator, "write_video", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "crashed", **args)
    assert [p.name for p in (tmp_path / "crashed").iterdir()] == [mtl.data.synth.generator.STAGING]
    monkeypatch.setattr(mtl.data.synth.generator, "write_video", real_write)
    synthesize(tmp_path / "crashed", **args)
    assert _tree(tmp_path / "crashed") == _tree(tmp_path / "clean")
