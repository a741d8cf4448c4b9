"""`mtl prepare`: raw datasets -> WebDataset shards (`train-000000.tar`, `val-000000.tar`) + `index.json`.

Work fans out over Ray tasks, one per work unit (an Aff-Wild2 video, an AFEW-VA clip, a DISFA subject, a chunk of
ExpW). Each task writes its own temporary shards, frames in video order; the driver then names them in a fixed
order, so re-running on the same input writes byte-identical shards. `out` may be a bucket (s3://, gs://): each
task then writes its shards to a local scratch folder and uploads them under `out/.prepare-tmp/`, the driver
renames them (a server-side copy: a shard appears whole or not at all), and index.json is written last, so no
reader sees an index whose shards are not all there. Frames whose image is missing or unreadable,
or that carry no valid label, are skipped and counted by reason in the summary and in index.json. Malformed
annotations stop the run with an error naming file and line.

The label protocol (mtl.labels.Protocol, `protocol=`) is recorded as index.json's top-level "protocol"; readers
that depend on it are told it, and a source that has no labels under it is refused before anything is read.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from PIL import Image

from mtl import storage
from mtl.config import PrepareConfig
from mtl.errors import ConfigError
from mtl.data.downsample import FrameBuckets
from mtl.data.images import TooManyPixels, open_image
from mtl.data.index import INDEX_NAME, SCHEMA_VERSION, LabelStats
from mtl.data.sources.base import SOURCES, Source, WorkUnit
from mtl.jobs.ray_session import RaySession
from mtl.labels import DEFAULT_PROTOCOL, SPLITS, TASKS, FrameRecord, get_protocol
from mtl.errors import DataError

log = logging.getLogger(__name__)

JPEG_QUALITY = 95
MAX_SKIP_EXAMPLES = 20
# A fixed tar member time makes shards reproducible byte for byte. It must be an int: a float mtime (webdataset's
# default, time.time()) makes tarfile add a PAX header to every member, a second header for readers to parse.
TAR_MTIME = 0
SHARD_PATTERN = "{split}-{number:06d}.tar"


@dataclass
class UnitResult:
    """What one work unit produced: temporary shard files and statistics per split, and its skips."""

    shards: list = field(default_factory=list)  # (split, tmp path, samples, labelled per task, bytes, sha256)
    stats: dict = field(default_factory=lambda: {s: LabelStats() for s in SPLITS})
    by_frame: FrameBuckets = field(default_factory=FrameBuckets)  # training labels by frame % 60 (data.downsample)
    skipped: dict = field(default_factory=dict)
    skip_examples: list = field(default_factory=list)
    frames: int = 0

    def skip(self, reason: str, record: FrameRecord) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.skip_examples) < MAX_SKIP_EXAMPLES:
            self.skip_examples.append({"reason": reason, "key": record.key, "image": record.image})


class SkipFrame(Exception):
    """A frame that is skipped, counted under the reason the message names (`unreadable_image`, ...)."""


def image_bytes(record: FrameRecord, size: int) -> bytes:
    """JPEG bytes of the record's face at `size` x `size`: the file itself when it is already such a JPEG and
    needs no crop or rotation (never re-encoded needlessly), else rotated, cropped, resized and re-encoded.

    Raises SkipFrame when the image cannot be decoded (`unreadable_image`) or has too many pixels to be
    (`too_many_pixels`, see `mtl.data.images.MAX_PIXELS`: checked from its header, before decoding)."""
    with open(record.image, "rb") as handle:
        data = handle.read()
    try:
        image = open_image(io.BytesIO(data))
        image.load()
    except (TooManyPixels, Image.DecompressionBombError):
        raise SkipFrame("too_many_pixels") from None
    except (OSError, ValueError, SyntaxError):
        raise SkipFrame("unreadable_image") from None
    if (image.format == "JPEG" and image.mode == "RGB" and image.size == (size, size) and record.crop is None
            and not record.rotate):
        return data
    image = image.convert("RGB")
    if record.rotate:
        image = image.rotate(record.rotate, resample=Image.Resampling.BILINEAR)
    if record.crop is not None:
        image = image.crop(record.crop)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


class _PartWriter:
    """Writes one split of one unit into numbered temporary tar parts of at most `shard_size` samples."""

    def __init__(self, tmp_dir: Path, unit_number: int, split: str, shard_size: int, result: UnitResult,
                 upload_to: Optional[str] = None):
        import webdataset as wds

        self._wds, self._tmp_dir, self._unit, self._split = wds, tmp_dir, unit_number, split
        self._shard_size, self._result, self._upload_to = shard_size, result, upload_to
        self._writer, self._path, self._count, self._labelled, self._part = None, None, 0, {}, 0

    def write(self, key: str, jpg: bytes, labels: dict) -> None:
        if self._writer is None or self._count >= self._shard_size:
            self.close()
            self._path = self._tmp_dir / f"u{self._unit:07d}-{self._split}-{self._part:04d}.tar"
            self._count, self._labelled, self._part = 0, {t: 0 for t in TASKS}, self._part + 1
        payload = json.dumps(labels, sort_keys=True).encode("utf-8")
        with self._writing():
            if self._writer is None:
                self._writer = self._wds.TarWriter(str(self._path), mtime=TAR_MTIME)
            self._writer.write({"__key__": key, "jpg": jpg, "json": payload})
        self._count += 1
        for task in TASKS:
            self._labelled[task] += labels[task] is not None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A full disk raises DiskFull naming the part (one line, see _get). After any failure the part's file is
        closed, and its tar stream marked closed: collected, it would try to write its end again."""
        try:
            with storage.naming_full_disk(self._path):
                yield
        except BaseException:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.tarstream.fileobj.closed = True  # tarfile's stream: its __del__ writes the end
                with suppress(OSError):
                    writer.stream.close()
            raise

    def close(self) -> None:
        if self._writer is not None:
            with self._writing():
                self._writer.close()
            # size and checksum here, in the unit's Ray task: renaming the file later does not change its bytes
            nbytes, sha256, location = self._path.stat().st_size, storage.sha256(self._path), str(self._path)
            if self._upload_to is not None:  # a bucket: the part goes up now, its local copy away
                location = storage.upload(self._path, storage.join(self._upload_to, self._path.name))
                self._path.unlink()
            self._result.shards.append((self._split, location, self._count, dict(self._labelled), nbytes, sha256))
            self._writer = None


def prepare_unit(unit_number: int, source: Source, unit: WorkUnit, tmp_dir: str, shard_size: int,
                 image_size: int, scratch: Optional[str] = None, protocol: str = DEFAULT_PROTOCOL) -> UnitResult:
    """Read one work unit of `source` and write its samples to temporary shards in `tmp_dir` (runs as a Ray task);
    a remote `tmp_dir` (a bucket) gets them from a local scratch folder of this task. The source comes as an
    argument, not from the registry: a worker does not see sources registered in the driver only."""
    if storage.local_path(tmp_dir) is None:
        with storage.scratch_folder("prepare", scratch) as local:
            return _write_unit(unit_number, source, unit, local, shard_size, image_size, protocol, upload_to=tmp_dir)
    return _write_unit(unit_number, source, unit, storage.local_path(tmp_dir), shard_size, image_size, protocol)


def _write_unit(unit_number: int, source: Source, unit: WorkUnit, folder: str, shard_size: int, image_size: int,
                protocol: str = DEFAULT_PROTOCOL, upload_to: Optional[str] = None) -> UnitResult:
    result = UnitResult(stats={split: LabelStats.empty(get_protocol(protocol)) for split in SPLITS})
    writers: dict[str, _PartWriter] = {}
    for record in source.read(unit):
        result.frames += 1
        if record.au is None and record.expr is None and record.va is None:
            result.skip("no_label", record)
            continue
        if not os.path.isfile(record.image):
            result.skip("missing_image", record)
            continue
        try:
            jpg = image_bytes(record, image_size)
        except SkipFrame as skip:
            result.skip(str(skip), record)
            continue
        labels = record.labels()
        if record.split not in writers:
            writers[record.split] = _PartWriter(Path(folder), unit_number, record.split, shard_size, result,
                                                upload_to)
        writers[record.split].write(record.key, jpg, labels)
        result.stats[record.split].add(labels)
        if record.split == "train":
            result.by_frame.add(labels)
    for writer in writers.values():
        writer.close()
    return result


def resolve_sources(names) -> dict[str, Source]:
    """The registered Source of each name; ConfigError naming every unknown one and the known ones."""
    unknown = [name for name in names if name not in SOURCES]
    if unknown:
        raise ConfigError(f"unknown source{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(sorted(SOURCES.names()))}")
    return {name: SOURCES.get(name) for name in names}


def discover_units(sources: dict[str, Source], roots: dict[str, str], protocol: str = DEFAULT_PROTOCOL,
                   images: Optional[dict[str, str]] = None) -> list[tuple[Source, WorkUnit]]:
    """Every source's work units under `protocol` (each source checked against it first), with the image folders
    `images` names ({source name: folder}) for the sources that take one."""
    get_protocol(protocol)
    images = images or {}
    stray = sorted(set(images) - set(roots))
    if stray:
        raise ConfigError(f"image folder given for source {', '.join(stray)}, which is not being prepared")
    for name in roots:
        sources[name].check_protocol(protocol)
    units = []
    for name, root in roots.items():
        options = {"images": images[name]} if name in images else {}
        found = sources[name].units(Path(root), protocol, **options)
        log.info("%s: %d work units under %s", name, len(found), root)
        units.extend((sources[name], unit) for unit in found)
    return units


_DEFAULTS = PrepareConfig()


def prepare(sources: dict[str, str], out: str | Path, shard_size: int = _DEFAULTS.shard_size,
            image_size: int = _DEFAULTS.image_size, progress: bool = True, session: Optional[RaySession] = None,
            scratch: Optional[str] = None, protocol: str = DEFAULT_PROTOCOL,
            images: Optional[dict[str, str]] = None) -> dict:
    """Write shards and index.json for `sources` ({registered source name: root folder}) into `out` (a folder, or a
    bucket URI: the tasks then stage their shards in `scratch`, see storage.scratch_folder); returns the index.
    Sources are resolved and discovered before Ray is used (the entry point's `session`,
    `mtl.jobs.ray_session.use_ray`), so bad names and layouts fail fast. `protocol` names the label protocol
    (recorded in index.json); `images` gives the image folder of the sources whose images live outside their root
    ({source name: folder}, e.g. s_affwild2's `--images`).

    Every stored face is `image_size` square (Aff-Wild2's cropped_aligned faces are 112 x 112 and are copied
    as they are)."""
    import ray

    from mtl.progress import progress_bar
    from mtl.jobs.ray_session import use_ray

    started = time.time()
    out = storage.local_path(out) or str(out)
    if storage.is_stream(out):
        raise ConfigError(f"{out}: a stream URL is read-only; write the shards to a folder or a bucket")
    pairs = discover_units(resolve_sources(sources), sources, protocol, images)
    if not pairs:
        raise DataError(f"no work units found in {sources}")
    units = [unit for _, unit in pairs]
    use_ray(session, "mtl.data.prepare.prepare")
    tmp_dir = storage.join(out, ".prepare-tmp")
    storage.remove_tree(tmp_dir)
    storage.makedirs(tmp_dir)
    task = ray.remote(num_cpus=1)(prepare_unit)
    refs = {source.name: ray.put(source) for source, _ in pairs}  # pickled once, not once per unit
    pending = {task.remote(i, refs[source.name], unit, tmp_dir, shard_size, image_size, scratch, protocol): i
               for i, (source, unit) in enumerate(pairs)}
    results: dict[int, UnitResult] = {}
    bar = progress_bar(total=len(units), desc="prepare", unit="unit", enabled=progress)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            number = pending.pop(done[0])
            results[number] = _get(done[0])
            bar.update(1)
            bar.set_postfix(frames=sum(r.frames for r in results.values()))
    except BaseException:
        _stop(list(pending))
        storage.remove_tree(tmp_dir)
        raise
    finally:
        bar.close()
    index = _finalise(out, tmp_dir, units, [results[i] for i in range(len(units))], sources, protocol)
    if images:
        index["summary"]["images"] = dict(images)
    index["image_size"] = image_size
    index["summary"]["seconds"] = round(time.time() - started, 2)
    storage.write_json(storage.join(out, INDEX_NAME), index)  # last: every shard it names is there
    return index


def _get(ref):
    """A task's result; its DataError or DiskFull raised here as one line (not as a Ray task traceback)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, DataError):
            raise DataError(str(err.cause)) from None
        if isinstance(err.cause, storage.DiskFull):
            raise storage.DiskFull(err.cause.errno, err.cause.strerror, err.cause.filename) from None
        raise


def _stop(refs: list, wait_s: float = 60.0) -> None:
    """Cancel the tasks of `refs` and wait until they have ended, their outcome read, before their temporary folder
    is removed: a task still running would fail in a folder gone from under it, and Ray would print that error's
    traceback after the one line of the error that stopped the run."""
    import ray

    for ref in refs:
        ray.cancel(ref, force=True)
    ended, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s) if refs else ([], [])
    for ref in ended:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - cancelled or failed: read, so that Ray does not print it
            pass


def _finalise(out: str, tmp_dir: str, units: list[WorkUnit], results: list[UnitResult], sources: dict,
              protocol: str = DEFAULT_PROTOCOL) -> dict:
    """Name the temporary shards in unit order, remove stale ones, and assemble the index."""
    storage.remove(storage.join(out, INDEX_NAME))
    splits = {}
    for split in SPLITS:
        shards, stats = [], LabelStats.empty(get_protocol(protocol))
        for result in results:
            stats.merge(result.stats[split])
            for shard_split, tmp_path, samples, labelled, nbytes, sha256 in result.shards:
                if shard_split != split:
                    continue
                name = SHARD_PATTERN.format(split=split, number=len(shards))
                storage.move(tmp_path, storage.join(out, name))
                shards.append({"name": name, "samples": samples, "labelled": labelled,
                               "bytes": nbytes, "sha256": sha256})
        keep = {s["name"] for s in shards}
        for stale in storage.list_files(out, f"{split}-*.tar"):
            if storage.name(stale) not in keep:
                storage.remove(stale)
        splits[split] = {"shards": shards, "stats": stats.to_json()}
    by_frame = FrameBuckets()
    for result in results:
        by_frame.merge(result.by_frame)
    splits["train"]["by_frame"] = by_frame.to_json()  # exact statistics after any data.downsample
    storage.remove_tree(tmp_dir)
    skipped: dict[str, int] = {}
    for result in results:
        for reason, count in result.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    per_source: dict[str, dict[str, int]] = {}
    for unit, result in zip(units, results):
        counts = per_source.setdefault(unit.source, {s: 0 for s in SPLITS})
        for split in SPLITS:
            counts[split] += result.stats[split].samples
    return {
        "schema": SCHEMA_VERSION,
        "protocol": protocol,
        "splits": splits,
        "summary": {
            "sources": {name: str(root) for name, root in sources.items()},
            "units": len(units),
            "frames_read": sum(r.frames for r in results),
            "samples": {split: splits[split]["stats"]["samples"] for split in SPLITS},
            "samples_per_source": per_source,
            "skipped": dict(sorted(skipped.items())),
            "skip_examples": [e for r in results for e in r.skip_examples][:MAX_SKIP_EXAMPLES],
        },
    }


def format_summary(index: dict) -> str:
    summary, protocol = index["summary"], get_protocol(index.get("protocol"))
    lines = [f"read {summary['frames_read']} frames from {summary['units']} units in {summary.get('seconds', 0)} s",
             f"protocol {protocol.name}: {protocol.num_au} AUs, {protocol.num_expr} expression classes"]
    for split in SPLITS:
        stats = index["splits"][split]["stats"]
        labelled = ", ".join(f"{t} {stats['labelled'][t]}" for t in TASKS)
        lines.append(f"{split}: {stats['samples']} samples in {len(index['splits'][split]['shards'])} shards "
                     f"(labelled: {labelled})")
    skipped = summary["skipped"]
    lines.append("skipped: " + (", ".join(f"{k} {v}" for k, v in skipped.items()) if skipped else "none"))
    return "\n".join(lines)
