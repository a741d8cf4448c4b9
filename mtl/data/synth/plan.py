"""Which face tracks a synthetic Aff-Wild2 holds: their names, their split, and the tasks each is annotated for.

A training video is annotated for 1, 2 or 3 of the tasks (the incomplete annotation of docs/recipe.md); validation
videos carry all three. By default each source video draws its task count from TASK_COUNT_PROBS and its tasks
uniformly; `task_counts=(p1, p2, p3)` instead fixes the shares of training face tracks annotated for exactly 1, 2
and 3 tasks (plan_videos), and `val_videos` the number of validation face tracks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from mtl.labels import TASKS

VAL_FRACTION = 0.22
TASK_COUNT_PROBS = (0.6, 0.3, 0.1)  # a training video is annotated for 1, 2 or 3 tasks
SHARES = "task_counts must be three shares of training videos annotated for 1, 2 and 3 tasks summing to 1"


@dataclass(frozen=True)
class VideoPlan:
    """One annotated face track: a folder under cropped_aligned/ and its annotation files."""

    name: str
    split: str  # "train" or "val"
    tasks: tuple[str, ...]  # tasks it is annotated for, in TASKS order
    slot: int  # index of the source video; the two people of a `_left`/`_right` pair share it
    person: int  # 0, or 1 for the `_right` person


def check_task_counts(task_counts) -> tuple[float, float, float]:
    """`task_counts` as three floats: non-negative shares summing to 1 (within 1e-6); ValueError naming it else."""
    try:
        shares = () if isinstance(task_counts, str) else tuple(float(p) for p in task_counts)
    except (TypeError, ValueError):
        shares = ()
    if len(shares) != 3 or not all(np.isfinite(shares)) or min(shares) < 0 or abs(sum(shares) - 1) > 1e-6:
        raise ValueError(f"{SHARES}, got {task_counts!r}")
    return shares


def check_val_videos(val_videos, videos: int) -> int:
    """`val_videos` if it is an integer from 1 to videos - 3 (three training tracks stay); ValueError naming it else."""
    if videos < 4:
        raise ValueError(f"val_videos needs videos >= 4 (one validation and three training videos), got "
                         f"videos={videos}")
    if isinstance(val_videos, bool) or not isinstance(val_videos, (int, np.integer)) or \
            not 1 <= val_videos <= videos - 3:
        raise ValueError(f"val_videos must be an integer from 1 to {videos - 3} (videos - 3: at least three "
                         f"training videos), got {val_videos!r}")
    return int(val_videos)


def task_count_targets(shares: Sequence[float], tracks: int) -> tuple[int, int, int]:
    """Training tracks to annotate for 1, 2 and 3 tasks: shares x tracks rounded by largest remainder (ties to
    fewer tasks), so they sum to `tracks`."""
    raw = np.round(np.asarray(shares, dtype=float) / sum(shares) * tracks, 9)
    counts = np.floor(raw).astype(int)
    for k in sorted(range(3), key=lambda k: (counts[k] - raw[k], k))[:max(0, tracks - int(counts.sum()))]:
        counts[k] += 1
    return int(counts[0]), int(counts[1]), int(counts[2])


def plan_videos(videos: int, seed: int, task_counts: Optional[Sequence[float]] = None,
                val_videos: Optional[int] = None) -> list[VideoPlan]:
    """Names, splits and annotated tasks of `videos` face tracks (two-person videos count twice).

    `val_videos`: validation face tracks (default round(VAL_FRACTION x videos)); slots are drawn until it is
    reached, so it is exact unless only a pair would be left to fill the last place. `task_counts=(p1, p2, p3)`:
    the training tracks annotated for exactly 1, 2 and 3 tasks are task_count_targets(shares, training tracks),
    exactly whenever the pairs (whose two tracks share their tasks) fit in those counts; a pair that does not fit
    goes where it overshoots least (the summary of synthesize gives target and realised counts). Tasks then go
    to the least-covered so far, so every task keeps a training video; ValueError where that cannot be. None for
    both keeps the default draw, byte for byte.
    """
    shares = None if task_counts is None else check_task_counts(task_counts)
    rng = np.random.default_rng([seed, 0])
    pairs = max(1, videos // 12) if videos >= 4 else 0
    slots = videos - pairs
    sizes = np.ones(slots, dtype=int)
    sizes[rng.choice(slots, pairs, replace=False)] = 2
    if val_videos is None:
        val_target = min(max(round(VAL_FRACTION * videos), 1), videos - 1) if videos >= 2 else 0
    else:
        val_target = check_val_videos(val_videos, videos)
    val_slots, val_count = set(), 0
    for slot in rng.permutation(slots):
        if val_count + sizes[slot] <= val_target:
            val_slots.add(int(slot))
            val_count += sizes[slot]
    train_slots = [slot for slot in range(slots) if slot not in val_slots]
    if shares is None:
        tasks = _drawn_tasks(rng, slots, val_slots, train_slots)
    else:
        tasks = {slot: set(TASKS) for slot in val_slots}
        tasks.update(_balanced_tasks(rng, _task_counts(rng, sizes, train_slots, shares), sizes, shares))
    plans = []
    for slot in range(slots):
        split = "val" if slot in val_slots else "train"
        ordered = tuple(task for task in TASKS if task in tasks[slot])
        names = [f"v{slot + 1:03d}"] if sizes[slot] == 1 else [f"v{slot + 1:03d}_left", f"v{slot + 1:03d}_right"]
        plans += [VideoPlan(name, split, ordered, slot, person) for person, name in enumerate(names)]
    return plans


def _drawn_tasks(rng: np.random.Generator, slots: int, val_slots: set, train_slots: list[int]) -> list[set]:
    """The default draw: a task count per slot from TASK_COUNT_PROBS, then that many tasks uniformly; a task no
    training video got is added to a training video with the fewest tasks."""
    counts = rng.choice([1, 2, 3], size=slots, p=TASK_COUNT_PROBS)
    tasks = [set(TASKS) if slot in val_slots else {TASKS[i] for i in rng.choice(3, counts[slot], replace=False)}
             for slot in range(slots)]
    for task in TASKS:  # every task gets at least one training video
        if train_slots and not any(task in tasks[slot] for slot in train_slots):
            tasks[min(train_slots, key=lambda slot: len(tasks[slot]))].add(task)
    return tasks


def _task_counts(rng: np.random.Generator, sizes: np.ndarray, train_slots: list[int],
                 shares: tuple[float, float, float]) -> dict[int, int]:
    """{training slot: number of tasks} meeting task_count_targets: pairs first, then single tracks, each where most
    tracks are left (a pair fits wherever any count has two left), the singles' counts shuffled among them."""
    left = list(task_count_targets(shares, int(sum(sizes[slot] for slot in train_slots))))
    counts = {}
    for slot in rng.permutation([slot for slot in train_slots if sizes[slot] == 2]).tolist():
        k = max(range(3), key=lambda k: (left[k], -k))
        counts[slot], left[k] = k + 1, left[k] - 2
    singles = [slot for slot in train_slots if sizes[slot] == 1]
    drawn = []
    for _ in singles:
        k = max(range(3), key=lambda k: (left[k], -k))
        drawn.append(k + 1)
        left[k] -= 1
    counts.update(zip(singles, rng.permutation(drawn).tolist()))
    return counts


def _balanced_tasks(rng: np.random.Generator, counts: dict[int, int], sizes: np.ndarray,
                    shares: tuple[float, float, float]) -> dict[int, set]:
    """{training slot: its tasks}: the `counts[slot]` tasks with the fewest training tracks so far (ties by the
    rng), pairs first; ValueError naming task_counts when the counts cannot cover every task."""
    if sum(counts.values()) < len(TASKS):
        raise ValueError(f"task_counts={list(shares)} leave a task without a training video: "
                         f"{int(sum(sizes[slot] for slot in counts))} training videos ({len(counts)} source videos) "
                         f"carry {sum(counts.values())} task annotations, fewer than the {len(TASKS)} tasks; use "
                         f"more videos, fewer validation videos or larger shares of 2 and 3 tasks")
    used, tasks = [0] * len(TASKS), {}
    for slot in sorted(counts, key=lambda slot: (-sizes[slot], slot)):
        tie = rng.permutation(len(TASKS))
        chosen = sorted(range(len(TASKS)), key=lambda i: (used[i], tie[i]))[:counts[slot]]
        for i in chosen:
            used[i] += int(sizes[slot])
        tasks[slot] = {TASKS[i] for i in chosen}
    return tasks
