"""Sequential reading of WebDataset tar shards: samples grouped by key, as fast as the bytes arrive.

Shards are opened through `mtl.storage` (local paths, s3:// gs:// file:// through pyarrow, and webdataset's
`gopen` for `pipe:` commands and http). Members are walked
with a minimal ustar header parser instead of Python's `tarfile`, whose per-member header handling costs more
than decoding a 112 px JPEG on a slow core (see `mtl bench loader`). GNU long names and PAX path records are
understood; other special members are skipped. Grouping follows the WebDataset convention: the key is the member
path up to the first dot of its file name, the rest is the field name.
"""

from __future__ import annotations

from typing import BinaryIO, Iterable, Iterator

from mtl.errors import DataError

BLOCK = 512


class ShardError(DataError):
    """A shard is truncated or not a tar file; the message names it. A DataError: the CLI prints it in one line,
    and a training run ends on it without a retry (see mtl.train.data_stop)."""


def _octal(field: bytes) -> int:
    field = field.strip(b"\0 ")
    return int(field, 8) if field else 0


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _read_exact(stream: BinaryIO, size: int, url: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ShardError(f"{url}: truncated tar (wanted {size} bytes, got {len(data)})")
    return data


def tar_members(stream: BinaryIO, url: str) -> Iterator[tuple[str, bytes]]:
    """(path, payload) of the regular files of a tar stream, in order."""
    long_name = None
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK or header == b"\0" * BLOCK:
            if header and len(header) < BLOCK:
                raise ShardError(f"{url}: truncated tar header")
            return
        try:
            valid = _octal(header[148:156]) == sum(header[:148]) + 256 + sum(header[156:])
            size, kind = _octal(header[124:136]), header[156:157]
        except ValueError:
            valid = False
        if not valid:
            raise ShardError(f"{url}: bad tar header checksum (not a tar file, or corrupted)")
        payload = _read_exact(stream, _padded(size), url)[:size]
        if kind in (b"0", b"\0"):
            name = long_name or _ustar_name(header)
            long_name = None
            yield name, payload
        elif kind == b"L":
            long_name = payload.rstrip(b"\0").decode("utf-8")
        elif kind == b"x":
            long_name = _pax_path(payload) or long_name


def _ustar_name(header: bytes) -> str:
    name = header[:100].rstrip(b"\0").decode("utf-8")
    prefix = header[345:500].rstrip(b"\0").decode("utf-8") if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


def _pax_path(payload: bytes):
    for record in payload.decode("utf-8").splitlines():
        _, _, keyword_value = record.partition(" ")
        keyword, _, value = keyword_value.partition("=")
        if keyword == "path":
            return value
    return None


def split_key(path: str) -> tuple[str, str]:
    folder, _, name = path.rpartition("/")
    stem, _, field = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), field


def shard_samples(url: str) -> Iterator[dict]:
    """Samples {"__key__", "__url__", <field>: bytes} of one shard (a local path or any mtl.storage location)."""
    from mtl.storage import open_read

    with open_read(url) as stream:
        sample: dict = {}
        for path, payload in tar_members(stream, url):
            key, field = split_key(path)
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            if not sample:
                sample = {"__key__": key, "__url__": url}
            sample[field] = payload
        if sample:
            yield sample


def tar_samples(urls: Iterable[str]) -> Iterator[dict]:
    for url in urls:
        yield from shard_samples(url)
