"""Shards checked against index.json before anything reads them: sizes (cheap: one stat per shard, done before
every training) and SHA-256 checksums (one read of every byte: `mtl check-shards`, `mtl prepare --verify`).

A truncated copy, a half-finished upload or a flipped byte then stops the command with one line naming the shard,
instead of failing mid-epoch inside a DataLoader worker.
"""

from __future__ import annotations

from mtl import storage
from mtl.data.index import ShardIndex, ShardInfo, shard_url
from mtl.labels import SPLITS, DataError


def shard_problem(root: str, shard: ShardInfo, checksum: bool) -> str | None:
    """What is wrong with one shard ("missing", a size or checksum mismatch), or None."""
    url = shard_url(root, shard.name)
    if storage.is_stream(url):  # pipe:/http shards: their size cannot be asked cheaply
        return None
    found = storage.size(url)
    if found is None:
        return f"{url}: missing"
    if shard.nbytes is not None and found != shard.nbytes:
        return f"{url}: {found} bytes, index.json says {shard.nbytes} (truncated or replaced)"
    if checksum and shard.sha256 is not None and storage.sha256(url) != shard.sha256:
        return f"{url}: SHA-256 differs from index.json (corrupt)"
    return None


def shard_problems(index: ShardIndex, checksum: bool = False) -> list[str]:
    """One line per bad shard of every split (sizes; with `checksum` also SHA-256)."""
    return [problem for split in SPLITS for shard in index.shards[split]
            if (problem := shard_problem(index.root, shard, checksum)) is not None]


def unverifiable(index: ShardIndex) -> int:
    """Shards whose index entry carries no size/checksum (written by an older mtl)."""
    return sum(shard.sha256 is None for split in SPLITS for shard in index.shards[split])


def check_shards(index: ShardIndex, checksum: bool = False) -> None:
    """Raise DataError naming the first bad shard (and how many more there are)."""
    problems = shard_problems(index, checksum)
    if problems:
        more = f" (and {len(problems) - 1} more shard(s); `mtl check-shards {index.root}` lists them)" \
            if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
