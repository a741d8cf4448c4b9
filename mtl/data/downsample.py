"""Down-sampling of training labels (`data.downsample`, docs/recipe.md §4.5): the reference's thinning of Aff-Wild2.

Rule: of a training frame of a listed source, the label of task t (of class c for EXPR) thinned 1 in N is kept iff
(frame + phase) % N == 0, `frame` being the frame number of the sample's json and `phase` drawn once in [0, N)
from default_rng([data.downsample.seed, SLOTS id of t or c]): one subset for the teacher and every student. Only that label is dropped; a frame left without any label is
not streamed. Neither the shard order nor the other frames matter. Validation and the window (CNN-RNN) stream are
never thinned.

Exact statistics without reading the shards: `mtl prepare` records the training labels of each source bucketed by
frame % DOWNSAMPLE_PERIOD (`FrameBuckets`, index.json `splits.train.by_frame`). Every N divides the period, so a
bucket's labels of one task (class) are all kept or all dropped, and the statistics after thinning are a sum over
buckets: per bucket, counts by label presence ("au,expr=4,va") give samples and labelled counts, AU patterns and VA
cells give what balancing needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np

from mtl.config import DOWNSAMPLE_PERIOD, Config
from mtl.data.index import LabelStats, ShardIndex, au_pattern, va_cell
from mtl.labels import PROTOCOLS, TASKS, Protocol, get_protocol

# position = the phase's fixed id: AU, VA, then EXPR class c at 2 + c (ABAW3's Other, class 7, after ABAW 2020's)
SLOTS = ("au", "va", *(f"expr={c}" for c in range(max(p.num_expr for p in PROTOCOLS.values()))))


def slot(task: str, value) -> int:
    """Fixed id of a task's label (an EXPR class's own)."""
    return SLOTS.index(f"expr={value}" if task == "expr" else task)


@dataclass(frozen=True)
class Thinning:
    """The rule of one training run: listed sources, and per slot the period N and the phase."""

    sources: frozenset = frozenset()
    periods: tuple = (1,) * len(SLOTS)
    phases: tuple = (0,) * len(SLOTS)

    @classmethod
    def from_config(cls, cfg: Config, split: str = "train") -> "Thinning":
        """data.downsample with its seed's phases (EXPR classes named as data.protocol's); no thinning outside the
        training split."""
        down = cfg.data.downsample
        if split != "train":
            return cls()
        names = cfg.data.schema().expr_names
        periods = (down.au, down.va, *(down.expr.get(name, 1) for name in names))
        periods += (1,) * (len(SLOTS) - len(periods))
        phases = tuple(int(np.random.default_rng([down.seed, i]).integers(n)) for i, n in enumerate(periods))
        return cls(frozenset(down.sources), periods, phases)

    @property
    def active(self) -> bool:
        return bool(self.sources) and any(n > 1 for n in self.periods)

    def keeps(self, task: str, value, frame: int) -> bool:
        """Whether a listed source's label `value` of `task` on frame number `frame` is kept."""
        i = slot(task, value)
        return (frame + self.phases[i]) % self.periods[i] == 0

    def apply(self, labels: dict) -> Optional[dict]:
        """The sample's labels with the dropped ones set to None; None when no label is left."""
        if labels["source"] not in self.sources:
            return labels
        dropped = {t: None for t in TASKS if labels[t] is not None and not self.keeps(t, labels[t], labels["frame"])}
        if not dropped:
            return labels
        if len(dropped) == sum(labels[t] is not None for t in TASKS):
            return None
        return {**labels, **dropped}

    def thin(self, samples: Iterable[tuple[str, bytes, dict]]) -> Iterator[tuple[str, bytes, dict]]:
        """(key, jpg, labels) samples after the rule (all of them when it is off)."""
        if not self.active:
            yield from samples
            return
        for key, jpg, labels in samples:
            kept = self.apply(labels)
            if kept is not None:
                yield key, jpg, kept


def presence(labels: dict) -> str:
    """Which labels a frame has, with its EXPR class: "au,expr=4,va", "expr=0", "au,va"."""
    parts = ["au"] * (labels["au"] is not None) + [f"expr={labels['expr']}"] * (labels["expr"] is not None)
    return ",".join(parts + ["va"] * (labels["va"] is not None))


def _add(counts: dict, key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


@dataclass
class FrameBuckets:
    """Training labels per source and frame % DOWNSAMPLE_PERIOD: {source: {residue: {"presence": {key: n}, "au":
    {pattern: n}, "va": {"i,j": n}}}}, empty buckets left out; `add` a sample's labels, `merge` a worker's."""

    sources: dict = field(default_factory=dict)

    def add(self, labels: dict) -> None:
        bucket = self.sources.setdefault(labels["source"], {}).setdefault(
            labels["frame"] % DOWNSAMPLE_PERIOD, {"presence": {}, "au": {}, "va": {}})
        _add(bucket["presence"], presence(labels))
        if labels["au"] is not None:
            _add(bucket["au"], au_pattern(labels["au"]))
        if labels["va"] is not None:
            _add(bucket["va"], "{},{}".format(*va_cell(*labels["va"])))

    def merge(self, other: "FrameBuckets") -> None:
        for source, residues in other.sources.items():
            for residue, theirs in residues.items():
                ours = self.sources.setdefault(source, {}).setdefault(residue, {"presence": {}, "au": {}, "va": {}})
                for part, counts in theirs.items():
                    for key, n in counts.items():
                        _add(ours[part], key, n)

    def to_json(self) -> dict:
        return {"period": DOWNSAMPLE_PERIOD,
                "sources": {source: {str(r): {part: dict(sorted(c.items())) for part, c in residues[r].items()}
                                     for r in sorted(residues)} for source, residues in sorted(self.sources.items())}}

    @classmethod
    def from_json(cls, data: dict) -> "FrameBuckets":
        return cls({source: {int(r): bucket for r, bucket in residues.items()}
                    for source, residues in data["sources"].items()})


def frame_buckets(index: ShardIndex) -> FrameBuckets:
    """The training split's buckets of index.json (required by its schema, `mtl.data.index.load_index`)."""
    return FrameBuckets.from_json(index.raw["splits"]["train"]["by_frame"])


def thinned_stats(buckets: FrameBuckets, rule: Thinning, protocol: Protocol | str) -> LabelStats:
    """The training split's label statistics after `rule`, summed over the buckets (sized for `protocol`)."""
    stats = LabelStats.empty(get_protocol(protocol))
    for source, residues in buckets.sources.items():
        rule_here = rule if source in rule.sources else Thinning()  # Thinning() keeps every label
        for residue, bucket in residues.items():
            for key, n in bucket["presence"].items():
                have = [(task, int(value) if value else None)
                        for task, _, value in (part.partition("=") for part in key.split(",") if part)]
                left = [(task, value) for task, value in have if rule_here.keeps(task, value, residue)]
                if not left:
                    continue
                stats.samples += n
                stats.tasks_per_sample[len(left)] += n
                for task, value in left:
                    stats.labelled[task] += n
                    if task == "expr":
                        stats.expr_counts[value] += n
            if rule_here.keeps("au", None, residue):
                for pattern, n in bucket["au"].items():
                    _add(stats.au_patterns, pattern, n)
            if rule_here.keeps("va", None, residue):
                for cell, n in bucket["va"].items():
                    stats.va_hist[tuple(map(int, cell.split(",")))] += n
    return stats


def training_stats(index: ShardIndex, cfg: Config, split: str = "train") -> LabelStats:
    """The label statistics the training stream of `split` follows (balancing, epoch length): index.json's, after
    data.downsample."""
    rule = Thinning.from_config(cfg, split)
    return thinned_stats(frame_buckets(index), rule, index.protocol) if rule.active else index.stats[split]


def label_counts(stats: LabelStats, protocol: Protocol | str) -> dict:
    """Samples and labels per task, per EXPR class named as `protocol`'s."""
    names = get_protocol(protocol).expr_names
    return {"samples": stats.samples, "au": stats.labelled["au"], "expr": dict(zip(names, stats.expr_counts)),
            "va": stats.labelled["va"]}


def downsample_counts(index: ShardIndex, cfg: Config) -> Optional[dict]:
    """Training samples and labels per task and EXPR class, all sources, before and after data.downsample (with
    data.downsample.seed's phases); None when it thins nothing (frame models: `mtl.family` asks; windows are never
    thinned). Unknown source names are a ConfigError."""
    from mtl.data.sources.base import SOURCES

    rule = Thinning.from_config(cfg)
    if not rule.active:
        return None
    for name in sorted(rule.sources):
        SOURCES.get(name, key="data.downsample.sources")
    down = cfg.data.downsample
    return {"sources": sorted(rule.sources), "seed": cfg.data.downsample.seed,
            "keep_1_in": {"au": down.au, "va": down.va, "expr": dict(down.expr)},
            "before": label_counts(index.stats["train"], index.protocol),
            "after": label_counts(thinned_stats(frame_buckets(index), rule, index.protocol), index.protocol)}


def format_counts(counts: dict) -> str:
    """One line: what thinning leaves of the training labels (EXPR classes that change)."""
    before, after = counts["before"], counts["after"]
    classes = ", ".join(f"{name} {n} -> {after['expr'][name]}" for name, n in before["expr"].items()
                        if n != after["expr"][name])
    expr = sum(before["expr"].values()), sum(after["expr"].values())
    return (f"down-sampling {', '.join(counts['sources'])} (seed {counts['seed']}), training labels of all sources: "
            f"AU {before['au']} -> {after['au']}; EXPR {expr[0]} -> {expr[1]}" + (f" ({classes})" if classes else "")
            + f"; VA {before['va']} -> {after['va']}; frames {before['samples']} -> {after['samples']}")
