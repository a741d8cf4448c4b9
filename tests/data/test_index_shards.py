"""Shards against index.json (`ShardIndex.check_shards`): a truncated shard stops training before any worker
starts, a flipped byte is caught by the checksum check; both in one line naming the shard, exit code 2."""

import shutil

import pytest
from click.testing import CliRunner

from tests.conftest import http_folder
from mtl.cli import main
from mtl.data.index import load_index
from mtl.errors import DataError


@pytest.fixture
def shards(tmp_path, imbalanced_shards):
    copy = tmp_path / "shards"
    shutil.copytree(imbalanced_shards, copy)
    return copy


def test_prepare_records_each_shards_size_and_checksum(shards):
    index = load_index(shards)
    assert all(s.nbytes == (shards / s.name).stat().st_size and len(s.sha256) == 64
               for split in index.shards for s in index.shards[split])
    assert index.shard_problems(checksum=True) == []


def test_a_truncated_shard_stops_training_in_one_line_before_any_worker(shards, tmp_path):
    victim = shards / load_index(shards).shards["train"][1].name
    victim.write_bytes(victim.read_bytes()[:-700])
    with pytest.raises(DataError, match=f"{victim.name}: .* bytes, index.json says"):
        load_index(shards).check_shards()
    result = CliRunner().invoke(main, ["train", f"data.shards={shards}", f"run.dir={tmp_path / 'run'}",
                                       "train.workers=1"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and victim.name in result.output
    assert not (tmp_path / "run" / "teacher" / "ray").exists()  # no Ray Train run was started


def test_a_flipped_byte_is_caught_by_the_checksum_check(shards):
    victim = shards / load_index(shards).shards["val"][0].name
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert load_index(shards).shard_problems() == []  # the same size: the cheap check cannot see it
    result = CliRunner().invoke(main, ["check-shards", str(shards)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {victim}: SHA-256 differs from index.json (corrupt)"
    victim.unlink()
    result = CliRunner().invoke(main, ["check-shards", str(shards)])
    assert result.exit_code == 2 and f"{victim}: missing" in result.output


def test_check_shards_over_http_names_a_truncated_and_a_corrupt_shard(shards):
    """`mtl check-shards http://...`: sizes by HEAD requests, checksums over the shard bytes served; the other
    shards pass."""
    index = load_index(shards)
    with http_folder(shards.parent) as base:
        root = f"{base}/{shards.name}"
        truncated, corrupt = (shards / index.shards["train"][0].name, shards / index.shards["val"][0].name)
        truncated.write_bytes(truncated.read_bytes()[:-512])
        data = bytearray(corrupt.read_bytes())
        data[len(data) // 2] ^= 0xFF
        corrupt.write_bytes(bytes(data))
        result = CliRunner().invoke(main, ["check-shards", root])
        assert result.exit_code == 2
        assert result.output.splitlines() == [
            f"error: {root}/{truncated.name}: {truncated.stat().st_size} bytes, index.json says "
            f"{index.shards['train'][0].nbytes} (truncated or replaced)",
            f"error: {root}/{corrupt.name}: SHA-256 differs from index.json (corrupt)"]
