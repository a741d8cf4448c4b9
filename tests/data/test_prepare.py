import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner

from tests.conftest import bucket_named_folders, job_env, moto_s3, write_affwild2, write_jpeg
from tests.test_storage import small_disk
from mtl.cli import main
from mtl.data.index import load_index
from mtl.data.sources.base import SOURCES, Source, WorkUnit
from mtl.labels import FrameRecord
from mtl.errors import DataError
from mtl.data.images import MAX_PIXELS
from mtl.data.prepare import prepare
from mtl.storage import DiskFull

VIDEOS = {
    "a": {"frames": 4, "missing": [2], "au": ["1,0,0,0,0,0,0,0", "0,1,0,0,0,0,0,0", "-1,-1,-1,-1,-1,-1,-1,-1",
                                                "0,0,0,0,0,0,0,1"], "expr": ["0", "1", "-1", "6"]},
    "b_left": {"frames": 3, "va": ["0.1,0.2", "-5,-5", "-0.3,0.9"]},
    "c": {"frames": 2, "split": "val", "au": ["0,0,1,0,0,0,0,0", "0,0,0,1,0,0,0,0"], "expr": ["4", "5"],
          "va": ["0.5,0.5", "-0.5,-0.5"]},
}


def read_shards(folder: Path, split: str) -> dict:
    index = load_index(folder)
    samples = {}
    for url in index.shard_urls(split):
        for sample in wds.WebDataset(url, shardshuffle=False):
            samples[sample["__key__"]] = (json.loads(sample["json"]), sample["jpg"])
    return samples


def test_shards_hold_exactly_the_raw_labels_and_skips_are_counted(tmp_path, ray_session):
    raw = write_affwild2(tmp_path / "raw", VIDEOS)
    (raw / "cropped_aligned/a/00004.jpg").write_bytes(b"not a jpeg")
    index = prepare({"affwild2": str(raw)}, tmp_path / "shards", shard_size=2, image_size=32, progress=False)
    train, val = read_shards(tmp_path / "shards", "train"), read_shards(tmp_path / "shards", "val")
    assert sorted(train) == ["affwild2/a/00001", "affwild2/b_left/00001", "affwild2/b_left/00003"]
    assert train["affwild2/a/00001"][0] == {"source": "affwild2", "video": "a", "frame": 1,
                                            "au": [1, 0, 0, 0, 0, 0, 0, 0], "expr": 0, "va": None}
    assert train["affwild2/b_left/00003"][0]["va"] == [-0.3, 0.9]
    assert train["affwild2/b_left/00003"][0]["au"] is None
    assert val["affwild2/c/00002"][0] == {"source": "affwild2", "video": "c", "frame": 2,
                                          "au": [0, 0, 0, 1, 0, 0, 0, 0], "expr": 5, "va": [-0.5, -0.5]}
    # the JPEG is copied as it is, not re-encoded
    assert train["affwild2/a/00001"][1] == (raw / "cropped_aligned/a/00001.jpg").read_bytes()
    summary = index["summary"]
    # a/00002 has no image, a/00003 no valid label, a/00004 an unreadable image, b_left/00002 no valid label
    assert summary["skipped"] == {"missing_image": 1, "no_label": 2, "unreadable_image": 1}
    assert {e["key"] for e in summary["skip_examples"]} == {"affwild2/a/00002", "affwild2/a/00003",
                                                            "affwild2/a/00004", "affwild2/b_left/00002"}
    stats = index["splits"]["train"]["stats"]
    assert stats["samples"] == 3 and stats["labelled"] == {"au": 1, "expr": 1, "va": 2}
    assert stats["au"]["positives"] == [1, 0, 0, 0, 0, 0, 0, 0] and stats["expr"]["counts"][0] == 1
    assert sum(map(sum, stats["va"]["hist"])) == 2
    assert [s["samples"] for s in index["splits"]["train"]["shards"]] == [1, 2]  # one video never shares a shard
    assert summary["samples_per_source"] == {"affwild2": {"train": 3, "val": 2}}


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_rerun_writes_identical_shards_and_removes_stale_ones(tmp_path, ray_session):
    raw = write_affwild2(tmp_path / "raw", VIDEOS)
    out = tmp_path / "shards"
    prepare({"affwild2": str(raw)}, out, shard_size=1, image_size=48, progress=False)
    first = digest(out)
    prepare({"affwild2": str(raw)}, out, shard_size=1, image_size=48, progress=False)
    assert digest(out) == first
    prepare({"affwild2": str(raw)}, out, shard_size=100, image_size=48, progress=False)
    assert sorted(digest(out)) == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    assert not (out / ".prepare-tmp").exists()


def test_images_of_another_size_are_resized_to_the_stored_size(tmp_path, ray_session):
    raw = write_affwild2(tmp_path / "raw", {"v": {"frames": 1, "expr": ["2"]}}, size=40)
    prepare({"affwild2": str(raw)}, tmp_path / "shards", image_size=24, progress=False)
    from io import BytesIO

    from PIL import Image

    (label, jpg), = read_shards(tmp_path / "shards", "train").values()
    assert Image.open(BytesIO(jpg)).size == (24, 24) and load_index(tmp_path / "shards").image_size == 24


def test_bad_annotation_stops_prepare_naming_file_and_line(tmp_path, ray_session):
    raw = write_affwild2(tmp_path / "raw", {"v": {"frames": 2, "expr": ["2", "9"]}})
    with pytest.raises(DataError, match=r"EXPR_Set/Training_Set/v.txt:3: expression 9"):
        prepare({"affwild2": str(raw)}, tmp_path / "shards", progress=False)
    assert not (tmp_path / "shards" / "index.json").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path, ray_session):
    raw = write_affwild2(tmp_path / "raw", {"v": {"frames": 3, "expr": ["2"]}})
    result = CliRunner().invoke(main, ["prepare", "--affwild2", str(raw), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "error: " in result.output and "v.txt:2: annotation ends at frame 1" in result.output


def test_all_four_sources_land_in_one_set_of_shards(tmp_path, ray_session):
    from PIL import Image
    from io import BytesIO

    from tests.data.sources.test_afew_va import entry, make_clip
    from tests.data.sources.test_disfa import write_images, write_labels
    from tests.data.sources.test_expw import make_expw

    raw = write_affwild2(tmp_path / "aff", {"v": {"frames": 1, "expr": ["2"]}})
    expw_root = make_expw(tmp_path / "expw")
    make_clip(tmp_path / "afew", "01", "001", {"00000": entry(5, -10), "00001": entry(-2.5, 0)})
    write_labels(tmp_path / "disfa", "SN001")
    write_images(tmp_path / "disfa", "SN001", [f"frame_det_00_{f:06d}.bmp" for f in (1, 2, 3)])
    sources = {"affwild2": str(raw), "expw": str(expw_root), "afew_va": str(tmp_path / "afew"),
               "disfa": str(tmp_path / "disfa")}
    index = prepare(sources, tmp_path / "shards", image_size=24, progress=False)
    train = read_shards(tmp_path / "shards", "train")
    assert index["summary"]["samples_per_source"] == {
        "affwild2": {"train": 1, "val": 0}, "expw": {"train": 3, "val": 0}, "afew_va": {"train": 2, "val": 0},
        "disfa": {"train": 3, "val": 0}}
    assert index["summary"]["skipped"] == {"missing_image": 1}  # ExpW's missing.jpg
    assert train["expw/party/00001"][0]["expr"] == 0 and train["expw/party/00000"][0]["expr"] == 4
    assert train["afew_va/001/00000"][0]["va"] == [0.5, -1.0]
    assert train["disfa/SN001/00002"][0]["au"] == [0, 0, 0, 1, 0, 0, 1, 1]
    # crops are cut from the source image and stored at the stored size: ExpW face 0 is the red box
    red = np.asarray(Image.open(BytesIO(train["expw/party/00000"][1])))
    assert red.shape == (24, 24, 3) and red[..., 0].mean() > 200 and red[..., 1].mean() < 40


def toy_discover(root: Path) -> list[WorkUnit]:
    """A toy dataset: ROOT/<split>/<frame>.jpg, one unit per split, each frame's expression its number."""
    return [WorkUnit("toy", split, (str(root / split), split)) for split in ("train", "val") if (root / split).is_dir()]


def toy_read(unit: WorkUnit) -> Iterator[FrameRecord]:
    folder, split = unit.args
    for image in sorted(Path(folder).glob("*.jpg")):
        yield FrameRecord("toy", split, int(image.stem), split, str(image), expr=int(image.stem))


TOY = Source("toy", "--toy", "Toy root.", toy_discover, toy_read)


def test_a_source_registered_by_the_test_runs_through_mtl_prepare(tmp_path, ray_session):
    for name in ("train/1.jpg", "train/2.jpg", "val/3.jpg"):
        write_jpeg(tmp_path / "toy" / name)
    command = ["prepare", "--source", f"toy={tmp_path / 'toy'}", "--out", str(tmp_path / "shards"),
               "--image-size", "32"]
    unknown = CliRunner().invoke(main, command)
    assert unknown.exit_code == 2
    assert unknown.output.strip() == f"error: unknown source 'toy'; known: {', '.join(sorted(SOURCES.names()))}"
    with SOURCES.temporarily("toy", TOY):
        result = CliRunner().invoke(main, [*command, "--verify"])
    assert result.exit_code == 0, result.output
    assert "2 shard(s) of " in result.output and "match index.json" in result.output  # --verify re-read them
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["summary"]["samples_per_source"] == {"toy": {"train": 2, "val": 1}}
    assert index["splits"]["train"]["stats"]["labelled"] == {"au": 0, "expr": 2, "va": 0}
    assert sorted(read_shards(tmp_path / "shards", "train")) == ["toy/train/00001", "toy/train/00002"]
    assert read_shards(tmp_path / "shards", "val")["toy/val/00003"][0]["expr"] == 3
    assert "toy" not in SOURCES


def test_cli_needs_at_least_one_source(tmp_path):
    result = CliRunner().invoke(main, ["prepare", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "Error: give at least one source: --afew-va, --affwild2" in result.output


def test_prepare_into_a_bucket_writes_the_same_shards_and_index_last_and_check_shards_reads_them(
        tmp_path, ray_session):
    """`mtl prepare --out s3://... --verify` (a CLI joining the session's Ray, the bucket's variables in its job
    runtime_env): byte-identical shards to a local prepare, nothing staged left behind (bucket, scratch, no folder
    named `s3:`), and `mtl check-shards s3://...` on the result, a truncated upload named."""
    import subprocess
    import sys

    import ray

    from mtl import storage

    raw = write_affwild2(tmp_path / "raw", VIDEOS)
    local = prepare({"affwild2": str(raw)}, tmp_path / "local", shard_size=2, image_size=32, progress=False)
    (tmp_path / "cwd").mkdir()
    with moto_s3("mtl-prepare") as aws:
        root = "s3://mtl-prepare/data/shards"
        storage.write_atomic(f"{root}/train-000009.tar", b"stale")  # from an earlier, larger prepare
        done = subprocess.run([sys.executable, "-m", "mtl.cli", "prepare", "--affwild2", str(raw), "--out", root,
                               "--shard-size", "2", "--image-size", "32", "--verify",
                               "--address", ray.get_runtime_context().gcs_address],
                              cwd=tmp_path / "cwd", capture_output=True, text=True, timeout=300,
                              env=job_env({**aws, "MTL_LOCAL_DIR": str(tmp_path / "scratch")}))
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        names = [s["name"] for split in ("train", "val") for s in local["splits"][split]["shards"]]
        assert f"wrote {root}/index.json" in done.stdout
        assert f"{len(names)} shard(s) of {root} match" in done.stdout  # --verify re-read them
        index = load_index(root)
        assert {k: v for k, v in index.raw.items() if k != "summary"} == \
            {k: v for k, v in local.items() if k != "summary"}  # same names, sizes and SHA-256 as local shards
        assert [storage.name(f) for f in storage.list_files(root)] == sorted([*names, "index.json"])
        assert not storage.exists(f"{root}/.prepare-tmp")
        result = CliRunner().invoke(main, ["check-shards", root])
        assert result.exit_code == 0 and f"{len(names)} shard(s) of {root} match" in result.output, result.output
        victim = index.shard_urls("train")[1]
        storage.write_atomic(victim, storage.read_bytes(victim)[:-512])
        result = CliRunner().invoke(main, ["check-shards", root])
        assert result.exit_code == 2 and result.output.startswith(f"error: {victim}: ") and "bytes" in result.output
    assert os.listdir(tmp_path / "scratch") == []  # every task's staging folder removed
    assert bucket_named_folders(tmp_path) == [] and not [n for n in os.listdir() if n.startswith("s3:")]


def test_a_full_disk_stops_prepare_in_one_line_and_leaves_no_partial_file(tmp_path, ray_session, monkeypatch):
    raw = write_affwild2(tmp_path / "raw", {f"v{i}": {"frames": 20, "expr": ["1"] * 20} for i in range(4)}, size=64)
    out = tmp_path / "out"
    with small_disk(out, 64) as mounted:
        if mounted:  # 64 KB for about 300 KB of shards
            result = CliRunner().invoke(main, ["prepare", "--affwild2", str(raw), "--out", str(out),
                                               "--image-size", "64"])
            assert result.exit_code == 2 and "Traceback" not in result.output, result.output
            (line,) = [line for line in result.output.splitlines() if "error" in line.lower()]
            assert re.fullmatch(rf"error: {out}/\.prepare-tmp/u\d{{7}}-train-\d{{4}}\.tar: no space left on device "
                                rf"\(\d+\.\d MB free on {out}\)", line), line
            assert os.listdir(out) == []  # neither shards nor .prepare-tmp
            return
    # no tmpfs here: the unit's tar parts go to /dev/full (in this process), and a task's DiskFull reaches the
    # driver as itself, not as a Ray task error
    import ray
    import webdataset.writer

    from mtl.data.prepare import _get, prepare_unit
    from mtl.data.sources import affwild2

    monkeypatch.setattr(webdataset.writer, "gopen", lambda url, mode: open("/dev/full", mode))
    with pytest.raises(DiskFull, match=r"u0000000-train-0000\.tar: no space left on device \(\d"):
        prepare_unit(0, SOURCES.get("affwild2"), affwild2.discover(raw)[0], str(out), 5000, 64)
    full = DiskFull.at(out / "part.tar")
    with pytest.raises(DiskFull) as err:
        _get(ray.remote(raise_in_a_task).remote(full))
    assert str(err.value) == str(full) and type(err.value) is DiskFull


def raise_in_a_task(error: BaseException) -> None:
    raise error


def slow_read(unit: WorkUnit) -> Iterator[FrameRecord]:
    """A bad unit fails at once; the others write one tar part per frame for a while (shard_size=1)."""
    folder, name = unit.args
    if name == "bad":
        time.sleep(0.3)
        raise DataError(f"{folder}/bad.txt:2: a bad line")
    for frame in range(40):
        time.sleep(0.02)
        yield FrameRecord("slow", name, frame, "train", str(Path(folder) / "1.jpg"), expr=1)


SLOW = Source("slow", "--slow", "Slow root.", lambda root: [WorkUnit("slow", name, (str(root), name))
                                                             for name in ["bad", *map(str, range(11))]], slow_read)


def test_after_a_data_error_the_other_tasks_end_before_their_folder_goes(tmp_path, ray_session, monkeypatch):
    """The one line of the data error, and no task error after it: the driver waits for the cancelled tasks to end
    before it removes their temporary folder (a task still writing there would fail, and Ray print that)."""
    import ray._private.worker

    unhandled = []
    monkeypatch.setattr(ray._private.worker, "_unhandled_error_handler", unhandled.append)
    write_jpeg(tmp_path / "slow" / "1.jpg")
    with SOURCES.temporarily("slow", SLOW), pytest.raises(DataError, match="bad.txt:2: a bad line"):
        prepare({"slow": str(tmp_path / "slow")}, tmp_path / "out", shard_size=1, image_size=32, progress=False)
    assert not (tmp_path / "out" / ".prepare-tmp").exists()
    time.sleep(1.0)  # a task that outlived the driver's cleanup would fail by now
    import gc

    gc.collect()
    assert not (tmp_path / "out" / ".prepare-tmp").exists() and unhandled == []


def huge_png(path: Path, width: int = 12000, height: int = 12000) -> Path:
    """A valid greyscale PNG of width x height black pixels: under 1 MB on disk, width x height bytes decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(1), bytes(width + 1)  # each row: filter byte 0, then the pixels
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def test_an_image_of_too_many_pixels_is_skipped_before_it_is_decoded(tmp_path, ray_session):
    raw = write_affwild2(tmp_path / "raw", {"v": {"frames": 2, "expr": ["1", "2"]}})
    huge_png(raw / "cropped_aligned/v/00002.jpg")  # 144 megapixels, 1.5 GB to decode as RGB
    assert 12000 * 12000 > MAX_PIXELS
    index = prepare({"affwild2": str(raw)}, tmp_path / "shards", image_size=32, progress=False)
    assert index["summary"]["skipped"] == {"too_many_pixels": 1}
    assert index["summary"]["skip_examples"] == [{"reason": "too_many_pixels", "key": "affwild2/v/00002",
                                                   "image": str(raw / "cropped_aligned/v/00002.jpg")}]
