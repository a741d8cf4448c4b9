import io
import tarfile

import pytest
import webdataset as wds

from mtl.data.shards import ShardError, shard_samples, split_key


def write_tar(path, members, fmt=tarfile.USTAR_FORMAT, mtime=0):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(payload), mtime
            tar.addfile(info, io.BytesIO(payload))


def test_samples_group_by_key_like_webdataset(tmp_path):
    path = str(tmp_path / "s.tar")
    with wds.TarWriter(path) as sink:  # webdataset's own writer (float mtimes -> PAX headers)
        sink.write({"__key__": "a/v1/00001", "jpg": b"\xff\xd8x", "json": b"{}"})
        sink.write({"__key__": "a/v1/00002", "jpg": b"y" * 700, "json": b"{\"k\": 1}"})
    ours = list(shard_samples(path))
    theirs = list(wds.WebDataset(path, shardshuffle=False))
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs] == ["a/v1/00001", "a/v1/00002"]
    assert all(o["jpg"] == t["jpg"] and o["json"] == t["json"] for o, t in zip(ours, theirs))


def test_long_names_in_gnu_and_pax_tars(tmp_path):
    long_dir = "d" * 120
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"{fmt}.tar"
        write_tar(path, [(f"{long_dir}/k.jpg", b"1"), (f"{long_dir}/k.json", b"2")], fmt=fmt)
        (sample,) = shard_samples(str(path))
        assert sample["__key__"] == f"{long_dir}/k" and sample["jpg"] == b"1" and sample["json"] == b"2"


def test_split_key_uses_the_first_dot_of_the_file_name():
    assert split_key("expw/party.v2/00001.seg.png") == ("expw/party.v2/00001", "seg.png")
    assert split_key("k.jpg") == ("k", "jpg")


def test_truncated_or_foreign_files_name_the_shard(tmp_path):
    path = tmp_path / "t.tar"
    write_tar(path, [("k.jpg", b"x" * 2000)])
    path.write_bytes(path.read_bytes()[:1200])
    with pytest.raises(ShardError, match=r"t.tar: truncated tar"):
        list(shard_samples(str(path)))
    (tmp_path / "n.tar").write_bytes(b"hello" * 200)
    with pytest.raises(ShardError, match=r"n.tar: bad tar header checksum"):
        list(shard_samples(str(tmp_path / "n.tar")))
