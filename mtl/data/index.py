"""`index.json`: what a streaming worker needs to know about the shards without reading them, and the checks of
the shards against it (`ShardIndex`).

Per split: the shard list with sample and label counts, file size and SHA-256, and the label statistics that
balancing uses (AU positives and AU label patterns, EXPR class counts, the 20x20 VA histogram). The top-level
"protocol" names the label protocol the shards were written in (`mtl.labels.Protocol`), which gives the AU and EXPR
widths of everything read from them. Also the prepare summary: samples per source, skipped frames by reason with
examples. The training split also holds `by_frame`, its labels bucketed by frame % 60
(`mtl.data.downsample.FrameBuckets`). Schema SCHEMA_VERSION only: an index of another schema is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.labels import NUM_AU, NUM_EXPR, SPLITS, TASKS, VA_BINS, Protocol, get_protocol, va_bin
from mtl.errors import DataError

INDEX_NAME = "index.json"
SCHEMA_VERSION = 2  # 2: protocol, by_frame and each shard's bytes and sha256 always written
VA_EDGES = np.linspace(-1.0, 1.0, VA_BINS + 1)


def va_cell(valence: float, arousal: float) -> tuple[int, int]:
    """Cell of the 20x20 grid over [-1, 1]^2 (`mtl.labels.va_bin` per axis: the loss's bins)."""
    return va_bin(valence), va_bin(arousal)


UNLABELLED = "-"  # an AU the frame carries no label for, in an AU pattern


def au_pattern(au) -> str:
    """AU labels -> pattern string like '10010000' (the protocol's AU order); an unlabelled AU (-1, a partial_au
    protocol's) is '-': '10-1'."""
    return "".join("1" if v == 1 else "0" if v == 0 else UNLABELLED for v in au)


@dataclass
class LabelStats:
    """Label counts of one split; `add` one sample's labels, `merge` partial stats from parallel workers. Widths
    are the protocol's (`empty`): `expr_counts` has one count per class, `num_au` is the AU width when no pattern
    gives it."""

    samples: int = 0
    labelled: dict = field(default_factory=lambda: {t: 0 for t in TASKS})
    au_patterns: dict = field(default_factory=dict)
    expr_counts: list = field(default_factory=lambda: [0] * NUM_EXPR)
    va_hist: np.ndarray = field(default_factory=lambda: np.zeros((VA_BINS, VA_BINS), dtype=np.int64))
    tasks_per_sample: list = field(default_factory=lambda: [0] * (len(TASKS) + 1))
    num_au: int = NUM_AU

    @classmethod
    def empty(cls, protocol: Protocol) -> "LabelStats":
        """No samples yet, sized for `protocol`'s AUs and expression classes."""
        return cls(expr_counts=[0] * protocol.num_expr, num_au=protocol.num_au)

    def add(self, labels: dict) -> None:
        self.samples += 1
        present = 0
        if labels["au"] is not None:
            present += 1
            pattern = au_pattern(labels["au"])
            self.au_patterns[pattern] = self.au_patterns.get(pattern, 0) + 1
        if labels["expr"] is not None:
            present += 1
            self.expr_counts[labels["expr"]] += 1
        if labels["va"] is not None:
            present += 1
            self.va_hist[va_cell(*labels["va"])] += 1
        for task in TASKS:
            self.labelled[task] += labels[task] is not None
        self.tasks_per_sample[present] += 1

    def merge(self, other: "LabelStats") -> None:
        self.samples += other.samples
        for task in TASKS:
            self.labelled[task] += other.labelled[task]
        for pattern, count in other.au_patterns.items():
            self.au_patterns[pattern] = self.au_patterns.get(pattern, 0) + count
        self.expr_counts = [a + b for a, b in zip(self.expr_counts, other.expr_counts)]
        self.va_hist = self.va_hist + other.va_hist
        self.tasks_per_sample = [a + b for a, b in zip(self.tasks_per_sample, other.tasks_per_sample)]

    @property
    def au_width(self) -> int:
        """AUs per pattern: the patterns' own width (one protocol's), else `num_au`."""
        return len(next(iter(self.au_patterns))) if self.au_patterns else self.num_au

    def au_counts(self, mark: str) -> list[int]:
        """Per AU, the samples whose pattern holds `mark` there ("1": positives)."""
        counts = [0] * self.au_width
        for pattern, count in self.au_patterns.items():
            for j, bit in enumerate(pattern):
                counts[j] += count * (bit == mark)
        return counts

    def au_positives(self) -> list[int]:
        return self.au_counts("1")

    def au_labelled(self) -> list[int]:
        """Per AU, the samples labelled for it (all AU-labelled samples under ABAW 2020; fewer with per-AU masks)."""
        return [p + n for p, n in zip(self.au_positives(), self.au_counts("0"))]

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "labelled": dict(self.labelled),
            "tasks_per_sample": list(self.tasks_per_sample),
            "au": {"positives": self.au_positives(), "patterns": dict(sorted(self.au_patterns.items()))},
            "expr": {"counts": list(self.expr_counts)},
            "va": {"edges": VA_EDGES.round(6).tolist(), "hist": self.va_hist.tolist()},
        }

    @classmethod
    def from_json(cls, data: dict) -> "LabelStats":
        return cls(samples=data["samples"], labelled=dict(data["labelled"]),
                   au_patterns=dict(data["au"]["patterns"]), expr_counts=list(data["expr"]["counts"]),
                   va_hist=np.asarray(data["va"]["hist"], dtype=np.int64),
                   tasks_per_sample=list(data["tasks_per_sample"]), num_au=len(data["au"]["positives"]))


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    labelled: dict  # task -> samples with that label
    nbytes: int  # file size and SHA-256 as written
    sha256: str

    def problem(self, root: str, checksum: bool) -> Optional[str]:
        """What is wrong with this shard under `root` ("missing", a size or, with `checksum`, SHA-256 mismatch), or
        None. Sizes of http(s) shards come from HEAD requests; a `pipe:` command's cannot be asked."""
        url = shard_url(root, self.name)
        if url.startswith("pipe:"):
            return None
        found = storage.size(url)
        if found is None:
            if not storage.is_file(url):
                return f"{url}: missing"
        elif found != self.nbytes:
            return f"{url}: {found} bytes, index.json says {self.nbytes} (truncated or replaced)"
        if checksum and storage.sha256(url) != self.sha256:
            return f"{url}: SHA-256 differs from index.json (corrupt)"
        return None


@dataclass
class ShardIndex:
    """The parsed index.json of a shard folder, and the checks of its shards against it (before anything reads
    them: a truncated copy, a half-finished upload or a flipped byte stops a command in one line naming the shard,
    not a DataLoader worker mid-epoch)."""

    root: str
    shards: dict  # split -> list[ShardInfo]
    stats: dict  # split -> LabelStats
    image_size: int  # every stored face is image_size x image_size
    raw: dict
    protocol: Protocol  # the labels' (index.json "protocol")

    def shard_urls(self, split: str) -> list[str]:
        return [shard_url(self.root, s.name) for s in self.shards[split]]

    def shard_sizes(self, split: str) -> list[int]:
        return [s.samples for s in self.shards[split]]

    def check_protocol(self, protocol_name: str, where: str = "data.protocol") -> None:
        """Refuse shards written in another label protocol than `protocol_name` (what `where` names), in one line."""
        if self.protocol.name != protocol_name:
            hint = f" (set data.protocol={self.protocol.name}, or prepare shards under {protocol_name})" \
                if where == "data.protocol" else ""
            raise DataError(f"shards {self.root} hold protocol {self.protocol.name} labels, but {where} is "
                            f"{protocol_name}{hint}")

    def shard_problems(self, checksum: bool = False) -> list[str]:
        """One line per bad shard of every split: sizes (one stat or HEAD request per shard, cheap enough before
        every training); with `checksum` also SHA-256 (one read of every byte: `mtl check-shards`)."""
        return [problem for split in SPLITS for shard in self.shards[split]
                if (problem := shard.problem(self.root, checksum)) is not None]

    def check_shards(self, checksum: bool = False) -> None:
        """Raise DataError naming the first bad shard (and how many more there are; `shard_problems`)."""
        problems = self.shard_problems(checksum)
        if problems:
            more = f" (and {len(problems) - 1} more shard(s); `mtl check-shards {self.root}` lists them)" \
                if len(problems) > 1 else ""
            raise DataError(problems[0] + more)


def shard_url(root: str, name: str) -> str:
    return storage.join(root, name)


def load_index(root: str | Path, path: Optional[str | Path] = None) -> ShardIndex:
    """Read `<root>/index.json` (or `path`): local, a bucket URI or http(s) (read-only); a missing file, one of
    another schema than SCHEMA_VERSION or one lacking a field is a clear error."""
    if str(root).startswith("pipe:"):
        raise DataError(f"data.shards {root!r}: a pipe: command streams one file, not a shard folder; give the "
                        "folder's path, bucket URI or http(s) URL")
    path = str(path) if path is not None else storage.join(root, INDEX_NAME)
    if not storage.is_file(path):
        raise FileNotFoundError(f"{path}: no shard index (run `mtl prepare` to write the shards first)")
    raw = storage.read_json(path)
    if raw.get("schema") != SCHEMA_VERSION:
        raise DataError(f"{path}: index schema {raw.get('schema')!r}, this mtl reads schema {SCHEMA_VERSION} only: "
                        "re-run `mtl prepare` to rewrite the shards and their index")
    try:
        shards = {split: [ShardInfo(s["name"], s["samples"], s["labelled"], s["bytes"], s["sha256"])
                          for s in raw["splits"][split]["shards"]] for split in SPLITS}
        stats = {split: LabelStats.from_json(raw["splits"][split]["stats"]) for split in SPLITS}
        raw["splits"]["train"]["by_frame"]  # the per-frame buckets data.downsample reads (mtl.data.downsample)
        if not isinstance(raw["protocol"], str):  # null would mean the default protocol to get_protocol
            raise KeyError("protocol")
        protocol, image_size = get_protocol(raw["protocol"]), int(raw["image_size"])
    except KeyError as err:
        raise DataError(f"{path}: schema {SCHEMA_VERSION} index without {err.args[0]!r}: re-run `mtl prepare` to "
                        "rewrite it") from None
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    return ShardIndex(root=str(root), shards=shards, stats=stats, image_size=image_size, raw=raw, protocol=protocol)
