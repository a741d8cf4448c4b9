"""Shards checked against index.json before anything reads them: sizes (cheap: one stat per shard, done before
every training) and SHA-256 checksums (one read of every byte: `mtl check-shards`, `mtl prepare --verify`).

Shards may be local, in a bucket or on an http(s) server (sizes from HEAD requests). A truncated copy, a
half-finished upload or a flipped byte then stops the command with one line naming the shard,
instead of failing mid-epoch inside a DataLoader worker.
"""

from __future__ import annotations

from mtl import storage
from mtl.data.index import ShardIndex, ShardInfo, shard_url
from mtl.labels import SPLITS
from mtl.errors import DataError


def shard_problem(root: str, shard: ShardInfo, checksum: bool) -> str | None:
    """What is wrong with one shard ("missing", a size or checksum mismatch), or None."""
    url = shard_url(root, shard.name)
    if url.startswith("pipe:"):  # a command's output: its size cannot be asked
        return None
    found = storage.size(url)  # http(s): a HEAD request
    if found is None:
        if not storage.is_file(url):
            return f"{url}: missing"
    elif shard.nbytes is not None and found != shard.nbytes:
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
