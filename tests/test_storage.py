"""mtl.storage on its three kinds of location (local path, file:// URI, S3 on a loopback moto server), and the
readers and writers routed through it: shards and index.json from a URI, a training whose run.dir is a URI."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.conftest import http_folder, moto_s3, tiny  # noqa: F401  (moto_s3: imported from here by other modules)
from mtl import storage
from mtl.config import load_config
from mtl.data.index import load_index
from mtl.data.shards import tar_samples

TINY = tiny("data.loader_workers=0", "train.epochs=1")


@pytest.fixture(scope="module")
def s3_bucket(ray_session):
    """A bucket on a loopback moto S3 server for this module. (Ray is started first, so its processes never see
    the AWS_* variables.)"""
    with moto_s3("mtl-test"):
        yield "s3://mtl-test"


@pytest.fixture(params=["local", "file", "s3"])
def location(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "file":
        return f"file://{tmp_path}/store"
    return f"{request.getfixturevalue('s3_bucket')}/{request.node.name.replace('[', '-').rstrip(']')}"


@contextmanager
def small_disk(folder: Path, kilobytes: int) -> Iterator[bool]:
    """`folder` made a tmpfs of `kilobytes` (yields True), or left as it is (False) where mounting is not allowed
    (not root, no mount permission): tests then make the disk full by patching the write."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(folder)]
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def upload_tree(local_folder, location: str) -> str:
    for name in sorted(os.listdir(local_folder)):
        with open(os.path.join(local_folder, name), "rb") as handle:
            storage.write_atomic(storage.join(location, name), handle.read())
    return location


def test_paths_and_uris():
    assert storage.is_uri("s3://b/k") and storage.is_uri("file:///tmp/x") and storage.is_uri("gs://b")
    assert not storage.is_uri("/tmp/x") and not storage.is_uri("runs/x") and not storage.is_uri("C:\\x")
    assert storage.join("s3://b/run/", "teacher", "best.pt") == "s3://b/run/teacher/best.pt"
    assert storage.join("/a/b", "c") == "/a/b/c"
    assert storage.absolute("s3://b/x") == "s3://b/x" and storage.absolute("x") == os.path.abspath("x")
    assert storage.name("s3://b/run/shards/train-000001.tar") == "train-000001.tar"
    assert storage.name("gs://b/run/") == "run"


def test_round_trip_on_every_kind_of_location(location):
    import torch

    target = storage.join(location, "sub", "data.json")
    assert not storage.exists(target) and not storage.is_file(target)
    storage.write_json(target, {"a": [1, 2]})
    assert storage.is_file(target) and storage.read_json(target) == {"a": [1, 2]}
    storage.write_json(target, {"a": 3})  # replaced whole
    assert storage.read_json(target) == {"a": 3}
    storage.save_torch({"w": torch.arange(4)}, storage.join(location, "sub", "m.pt"))
    assert storage.load_torch(storage.join(location, "sub", "m.pt"))["w"].tolist() == [0, 1, 2, 3]
    assert [storage.name(p) for p in storage.list_files(storage.join(location, "sub"))] == ["data.json", "m.pt"]
    assert storage.list_files(storage.join(location, "sub"), "*.pt") == [storage.join(location, "sub", "m.pt")]
    assert storage.list_files(storage.join(location, "nowhere")) == []
    storage.remove(target)
    assert not storage.exists(target)
    with pytest.raises(FileNotFoundError, match="data.json"):
        storage.read_bytes(target)
    if not location.startswith("s3://"):  # an atomic local write leaves no temporary file behind
        _, folder = storage.filesystem(storage.join(location, "sub"))
        assert os.listdir(folder) == ["m.pt"]


def test_a_failed_local_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.bin"
    storage.write_atomic(target, b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_local_path(target) as tmp:
            open(tmp, "wb").write(b"partial")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


@pytest.mark.parametrize("write", ["write_atomic", "save_torch"])
def test_a_full_disk_names_the_file_and_leaves_the_old_one_and_no_temporary_file(tmp_path, monkeypatch, write):
    import torch

    folder = tmp_path / "disk"
    with small_disk(folder, 64) as mounted:
        target = folder / "x.bin"
        storage.write_atomic(target, b"old")
        if not mounted:  # the data reaches the file, the flush to disk finds no space (as on NFS, or ext4's delalloc)
            monkeypatch.setattr(os, "fsync", no_space)
        with pytest.raises(storage.DiskFull) as err:
            if write == "write_atomic":
                storage.write_atomic(target, b"x" * (1 << 20))
            else:
                storage.save_torch({"w": torch.zeros(1 << 18)}, target)
        assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
        mount = re.escape(str(folder)) if mounted else r"/\S*"
        assert re.fullmatch(rf"{re.escape(str(target))}: no space left on device \(\d+\.\d MB free on {mount}\)",
                            str(err.value))
        assert target.read_bytes() == b"old" and os.listdir(folder) == ["x.bin"]


def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o027)
    try:
        storage.write_json(tmp_path / "a.json", {})
        with storage.atomic_local_path(tmp_path / "b.csv") as tmp:
            Path(tmp).write_text("x")
        (tmp_path / "c").write_text("")  # what open() makes
    finally:
        os.umask(old)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("a.json", "b.csv", "c")}
    assert modes == {"a.json": 0o640, "b.csv": 0o640, "c": 0o640}


def test_the_scratch_root_is_this_users_own(tmp_path, monkeypatch):
    monkeypatch.delenv("MTL_LOCAL_DIR", raising=False)
    monkeypatch.setattr(storage.tempfile, "gettempdir", lambda: str(tmp_path))
    root = storage.scratch_root()
    assert root == str(tmp_path / f"mtl-scratch-{os.getuid()}") and os.stat(root).st_mode & 0o777 == 0o700
    with storage.scratch_folder("prepare") as folder:
        assert os.path.dirname(folder) == root
    assert storage.scratch_root("/x") == "/x"
    monkeypatch.setattr(os, "getuid", lambda: 4242)  # as if another user's folder of that name were there
    (tmp_path / "mtl-scratch-4242").mkdir()
    with pytest.raises(FileExistsError, match="mtl-scratch-4242: another user's"):
        storage.scratch_root()


def test_stream_urls_are_read_only(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert storage.read_bytes(f"pipe:cat {tmp_path / 'a'}") == b"abc"
    with pytest.raises(ValueError, match="read-only"):
        storage.write_atomic("pipe:cat > x", b"")


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_shards_and_index_read_from_a_uri_match_the_local_copy(kind, imbalanced_shards, tmp_path, request):
    root = (f"file://{tmp_path}/shards" if kind == "file" else
            f"{request.getfixturevalue('s3_bucket')}/shards-{kind}")
    upload_tree(imbalanced_shards, root)
    local, remote = load_index(imbalanced_shards), load_index(root)
    assert remote.raw == local.raw and remote.shard_urls("train")[0].startswith(root + "/train-")
    read = [(s["__key__"], s["jpg"], s["json"]) for s in tar_samples(remote.shard_urls("train"))]
    assert read == [(s["__key__"], s["jpg"], s["json"]) for s in tar_samples(local.shard_urls("train"))]
    with pytest.raises(FileNotFoundError, match="no shard index"):
        load_index(root + "-missing")


def test_local_mode_training_with_run_dir_and_shards_in_s3(imbalanced_shards, s3_bucket):
    """Shards, index, config.json, best.pt and history.json all live in the bucket; a re-run sees it finished."""
    from mtl.runs import finished_training as finished
    from mtl.train.driver import train

    shards = upload_tree(imbalanced_shards, f"{s3_bucket}/train-shards")
    cfg = load_config("demo", (f"run.dir={s3_bucket}/run", f"data.shards={shards}", "train.workers=0", *TINY))
    outcome = train(cfg)
    assert outcome["best"] == f"{s3_bucket}/run/teacher/best.pt" and storage.is_file(outcome["best"])
    assert storage.read_json(f"{s3_bucket}/run/teacher/history.json")["history"][0]["epoch"] == 0
    assert finished(cfg)["best"] == outcome["best"]


def test_ray_train_soft_labels_and_report_on_a_file_uri(imbalanced_shards, tmp_path, ray_session):
    """A Ray Train run whose storage_path is a file:// URI (run.dir), soft labels written and read through the
    URI, and the report written there."""
    from mtl.eval.report import write_report
    from mtl.data.soft_join import SoftLabels
    from mtl.stages.soft_labels import compute_soft_labels
    from mtl.runs import soft_labels_dir
    from mtl.train.driver import train

    shards = upload_tree(imbalanced_shards, f"file://{tmp_path}/shards")
    run = f"file://{tmp_path}/run"
    cfg = load_config("demo", (f"run.dir={run}", f"data.shards={shards}", "train.workers=1", *TINY))
    outcome = train(cfg)
    assert outcome["best"] == f"{run}/teacher/best.pt"
    assert any(name.startswith("checkpoint_") for name in os.listdir(tmp_path / "run/teacher/ray/teacher"))
    manifest = compute_soft_labels(outcome["best"], shards, soft_labels_dir(cfg), progress=False)
    assert sum(manifest["shards"].values()) == load_index(shards).stats["train"].samples
    first = load_index(shards).shard_urls("train")[0]
    key = next(iter(tar_samples([first])))["__key__"]
    au, expr, va = SoftLabels(soft_labels_dir(cfg), "abaw2020").lookup(first, key)
    assert au.shape == (8,) and expr.shape == (7,) and va.shape == (40,) and np.isfinite(va).all()
    write_report(run, None, [], None, {"teacher": 1.0}, {})
    assert (tmp_path / "run/report.json").is_file() and (tmp_path / "run/report.md").is_file()
    assert (tmp_path / "run/plots/scores.png").is_file()
    shutil.rmtree(tmp_path / "run")


def test_an_http_shard_root_serves_index_json_and_the_streams_read_the_same_samples(imbalanced_shards):
    """A real http.server on loopback serving a shard folder: index.json (sizes by HEAD requests) and the train and
    eval streams (shards through webdataset's gopen/curl) read exactly what they read from the folder."""
    from tests.conftest import stream_config
    from mtl.data.stream import EvalStream, TrainStream

    with http_folder(imbalanced_shards.parent) as base:
        root = f"{base}/{imbalanced_shards.name}"
        local, remote = load_index(imbalanced_shards), load_index(root)
        assert remote.raw == local.raw and remote.shard_urls("val")[0] == f"{root}/val-000000.tar"
        remote.check_shards()  # every shard's size from a HEAD request matches index.json
        assert storage.size(remote.shard_urls("train")[0]) == local.shards["train"][0].nbytes
        spec = stream_config(batch_size=8, shuffle_buffer=20, batch_mode="mixed")
        batches = [next(iter(TrainStream(index, spec))).unpacked() for index in (local, remote)]
        assert batches[0]["key"] == batches[1]["key"] and np.array_equal(batches[0]["image"], batches[1]["image"])
        keys = [[b["key"] for b in EvalStream(index, batch_size=16)] for index in (local, remote)]
        assert keys[0] == keys[1] and sum(map(len, keys[1])) == local.stats["val"].samples
        with pytest.raises(FileNotFoundError, match="no shard index"):
            load_index(f"{base}/nowhere")
        assert not storage.is_file(f"{root}/nowhere.tar") and storage.size(f"{root}/nowhere.tar") is None
