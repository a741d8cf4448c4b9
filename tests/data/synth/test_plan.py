"""The synthetic data's missingness and validation size as parameters (mtl.data.synth.plan, synthesize, `mtl synth
--task-counts --val-videos`): requested shares come out exactly in the written annotation files, under both label
protocols; every task keeps a training video; the default draw is untouched."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mtl.data.synth.plan
from mtl.cli import main
from mtl.data.synth.generator import SET_DIRS, SPLIT_DIRS, SPLIT_FILES, synthesize, task_count_summary
from mtl.data.synth.plan import TASK_COUNT_PROBS, plan_videos, task_count_targets
from mtl.labels import TASKS

VIDEOS, FRAMES, SIZE = 24, 20, 16  # 24 face tracks hold two `_left`/`_right` pairs
MISSING = {"va": lambda f: f[1:3] == ["-5", "-5"], "expr": lambda f: f[3] == "-1",
           "au": lambda f: set(f[4:]) == {"-1"}}


def written_tasks(out: Path, protocol: str) -> dict[str, dict[str, set]]:
    """split -> {face track: the tasks it is annotated for}, read back from the annotation files."""
    found = {"train": {}, "val": {}}
    if protocol == "abaw2020":
        for task in TASKS:
            for split, split_dir in SPLIT_DIRS.items():
                for path in (out / "annotations" / SET_DIRS[task] / split_dir).glob("*.txt"):
                    found[split].setdefault(path.stem, set()).add(task)
        return found
    for split, name in SPLIT_FILES.items():  # a task a track is not annotated for is missing on all its lines
        for line in (out / name).read_text().splitlines()[1:]:
            fields = line.split(",")
            tasks = found[split].setdefault(fields[0].split("/")[0], set())
            tasks |= {task for task in TASKS if not MISSING[task](fields)}
    return found


# (shares, validation tracks, the training tracks annotated for 1, 2, 3 tasks out of VIDEOS - validation)
CASES = [((0.9, 0.1, 0.0), 4, (18, 2, 0)),
         ((0.6, 0.3, 0.1), 5, (11, 6, 2)),  # 19 x shares = 11.4, 5.7, 1.9: the two largest remainders round up
         ((0.0, 0.0, 1.0), 10, (0, 0, 14))]


@pytest.mark.parametrize("protocol", ["abaw2020", "abaw3"])
@pytest.mark.parametrize("shares, val, expected", CASES)
def test_requested_shares_come_out_exactly_in_the_written_files(tmp_path, protocol, shares, val, expected):
    out = tmp_path / "data"
    summary = synthesize(out, videos=VIDEOS, frames=FRAMES, seed=3, image_size=SIZE, progress=False,
                         protocol=protocol, task_counts=shares, val_videos=val)
    tracks = written_tasks(out, protocol)
    assert len(tracks["val"]) == val and all(tasks == set(TASKS) for tasks in tracks["val"].values())
    assert len(tracks["train"]) == VIDEOS - val
    by_count = Counter(len(tasks) for tasks in tracks["train"].values())
    assert (by_count[1], by_count[2], by_count[3]) == expected
    assert all(any(task in tasks for tasks in tracks["train"].values()) for task in TASKS)
    for name, tasks in tracks["train"].items():  # the two people of a pair share their tasks
        if name.endswith("_left"):
            assert tracks["train"].get(name.replace("_left", "_right"), tasks) == tasks
    assert summary["task_counts"] == list(shares) and summary["val_videos"] == val
    realised = summary["train_task_counts"]
    assert realised["videos"] == list(expected) == realised["target"] and realised["exact"] is True
    assert realised["shares"] == pytest.approx([n / (VIDEOS - val) for n in expected], abs=1e-6)


def test_tasks_are_spread_evenly_over_the_training_videos():
    for seed in range(3):
        train = [p for p in plan_videos(150, seed, (0.9, 0.1, 0.0), val_videos=60) if p.split == "train"]
        per_task = Counter(task for p in train for task in p.tasks)
        assert max(per_task.values()) - min(per_task.values()) <= 2  # a pair adds two tracks at once
        assert sum(per_task.values()) == 81 * 1 + 9 * 2


def test_largest_remainder_targets_sum_to_the_tracks():
    assert task_count_targets((0.6, 0.3, 0.1), 19) == (11, 6, 2)
    assert task_count_targets((0.9, 0.1, 0.0), 19) == (17, 2, 0)  # 17.1, 1.9
    assert task_count_targets((1 / 3, 1 / 3, 1 / 3), 10) == (4, 3, 3)  # equal remainders: fewer tasks first
    assert task_count_targets((0.0, 0.29, 0.71), 50) == (0, 15, 35)  # a tie at 14.5, 35.5 though 0.29 x 50 is 14.499...
    assert task_count_targets((0.0, 0.0, 1.0), 0) == (0, 0, 0)


def test_a_pair_that_cannot_fit_comes_as_close_as_it_can_and_says_so():
    """Three training tracks with one of each count: a training pair cannot fit, so it overshoots one count."""
    seen = set()
    for seed in range(12):
        plans = plan_videos(7, seed, (1 / 3, 1 / 3, 1 / 3), val_videos=4)  # 7 tracks: one pair
        train = [p for p in plans if p.split == "train"]
        summary = task_count_summary(plans, (1 / 3, 1 / 3, 1 / 3))
        pair_in_train = any(p.person == 1 for p in train)
        seen.add(pair_in_train)
        assert len(train) == 3 and summary["target"] == [1, 1, 1]
        if pair_in_train:
            assert sorted(summary["videos"]) == [0, 1, 2] and summary["exact"] is False
        else:
            assert summary["videos"] == [1, 1, 1] and summary["exact"] is True
        assert {task for p in train for task in p.tasks} == set(TASKS)
    assert seen == {True, False}


def test_val_videos_sets_the_validation_size_and_nothing_else_of_the_default_draw():
    for seed in range(3):
        default = plan_videos(60, seed)
        assert plan_videos(60, seed, val_videos=13) == default  # round(0.22 x 60): the same draw
        for val in (1, 30, 57):
            plans = plan_videos(60, seed, val_videos=val)
            assert sum(p.split == "val" for p in plans) == val
            assert [(p.name, p.slot, p.person) for p in plans] == [(p.name, p.slot, p.person) for p in default]
            assert all(p.tasks == TASKS for p in plans if p.split == "val")


def test_the_default_draw_uses_task_count_probs(monkeypatch):
    train = [p for seed in range(4) for p in plan_videos(300, seed) if p.split == "train"]
    share = np.bincount([len(p.tasks) for p in train], minlength=4)[1:] / len(train)
    assert np.abs(share - TASK_COUNT_PROBS).max() < 0.04  # ~940 tracks: 4 standard errors of the largest share
    monkeypatch.setattr(mtl.data.synth.plan, "TASK_COUNT_PROBS", (0.0, 1.0, 0.0))
    assert all(len(p.tasks) == 2 for p in plan_videos(300, 0) if p.split == "train")


@pytest.mark.parametrize("bad", [(0.5, 0.5), (0.5, 0.6, -0.1), (0.5, 0.5, 0.1), (float("nan"), 0.5, 0.5),
                                 "0.9,0.1,0", 1.0, (0.5, "x", 0.5)])
def test_bad_task_counts_are_refused_naming_the_option(tmp_path, bad):
    with pytest.raises(ValueError, match="^task_counts must be three shares .* summing to 1, got"):
        synthesize(tmp_path / "x", videos=6, frames=2, progress=False, task_counts=bad)
    assert not (tmp_path / "x").exists()
    plan_videos(6, 0, (0.9, 0.1, 1e-7))  # within the tolerance


@pytest.mark.parametrize("videos, bad", [(24, 0), (24, 22), (24, 2.5), (24, True), (3, 1)])
def test_bad_val_videos_are_refused_naming_the_option(tmp_path, videos, bad):
    with pytest.raises(ValueError, match="^val_videos"):
        synthesize(tmp_path / "x", videos=videos, frames=2, progress=False, val_videos=bad)
    assert not (tmp_path / "x").exists()
    assert sum(p.split == "val" for p in plan_videos(24, 0, val_videos=21)) == 21  # three training tracks stay


def test_shares_that_leave_a_task_without_training_video_are_refused():
    with pytest.raises(ValueError, match="^task_counts=.* leave a task without a training video"):
        plan_videos(2, 0, (1.0, 0.0, 0.0))  # one training track cannot carry three tasks one at a time
    assert [len(p.tasks) for p in plan_videos(2, 0, (0.0, 0.0, 1.0))] == [3, 3]


def cli(*args: str):
    return CliRunner().invoke(main, ["synth", *args])


@pytest.mark.parametrize("args, flag", [(["--task-counts", "0.9,0.1"], "--task-counts"),
                                        (["--task-counts", "a,b,c"], "--task-counts"),
                                        (["--task-counts", "0.5,0.6,-0.1"], "--task-counts"),
                                        (["--val-videos", "0"], "--val-videos"),
                                        (["--val-videos", "22"], "--val-videos"),
                                        (["--videos", "2", "--task-counts", "1,0,0"], "--task-counts")])
def test_the_cli_refuses_bad_values_in_one_line(tmp_path, args, flag):
    result = cli("--out", str(tmp_path / "x"), "--frames", "2", "--image-size", "16", *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: {flag}")
    assert not (tmp_path / "x").exists()


def test_the_cli_writes_the_requested_shares(tmp_path):
    result = cli("--out", str(tmp_path / "x"), "--videos", "24", "--frames", "6", "--image-size", "16",
                 "--task-counts", "0.6,0.3,0.1", "--val-videos", "5", "--protocol", "abaw3", "--seed", "1")
    assert result.exit_code == 0, result.output
    tracks = written_tasks(tmp_path / "x", "abaw3")
    assert len(tracks["val"]) == 5
    assert Counter(len(tasks) for tasks in tracks["train"].values()) == {1: 11, 2: 6, 3: 2}
