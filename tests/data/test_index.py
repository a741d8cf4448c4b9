"""The shard index: a `pipe:` command as a shard root is refused in one line (issue #20.10); schema 2 only, each
field required, refused in one line naming the file; the index's checks of its shards (protocol, sizes,
checksums)."""

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mtl.cli import main
from mtl.data.index import INDEX_NAME, SCHEMA_VERSION, LabelStats, load_index
from mtl.errors import DataError
from mtl.labels import ABAW3, SPLITS


def write_index(folder: Path, **changes) -> Path:
    """A folder with one 10-byte "shard" per split and an index.json recording them as `mtl prepare` does (schema
    SCHEMA_VERSION, protocol abaw3), top-level keys replaced by `changes`."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in SPLITS:
        data = f"{split:<10}"[:10].encode()
        (folder / f"{split}-000000.tar").write_bytes(data)
        shard = {"name": f"{split}-000000.tar", "samples": 1, "labelled": {}, "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest()}
        splits[split] = {"shards": [shard], "stats": LabelStats.empty(ABAW3).to_json()}
    splits["train"]["by_frame"] = {"period": 60, "sources": {}}
    raw = {"schema": SCHEMA_VERSION, "protocol": "abaw3", "splits": splits, "summary": {}, "image_size": 16,
           **changes}
    (folder / INDEX_NAME).write_text(json.dumps(raw))
    return folder


def test_a_pipe_command_is_not_a_shard_folder(tmp_path):
    with pytest.raises(DataError, match="a pipe: command streams one file, not a shard folder"):
        load_index("pipe:curl -s https://example.invalid/shards")
    result = CliRunner().invoke(main, ["train", f"run.dir={tmp_path / 'run'}", "data.shards=pipe:cat x"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "not a shard folder" in result.output


def test_an_index_of_another_schema_is_refused_in_one_line_saying_how_to_rewrite_it(tmp_path):
    assert SCHEMA_VERSION == 2
    index = load_index(write_index(tmp_path / "new"))
    assert index.protocol is ABAW3 and index.shards["val"][0].nbytes == 10 and len(index.shards["val"][0].sha256) == 64
    for schema in (1, None, 3):
        path = write_index(tmp_path / f"s{schema}", schema=schema) / INDEX_NAME
        with pytest.raises(DataError) as caught:
            load_index(path.parent)
        assert str(caught.value) == (f"{path}: index schema {schema!r}, this mtl reads schema 2 only: re-run "
                                     "`mtl prepare` to rewrite the shards and their index")


@pytest.mark.parametrize("field", ["protocol", "bytes", "sha256", "image_size", "by_frame"])
def test_each_field_is_required(tmp_path, field):
    folder = write_index(tmp_path / "shards")
    raw = json.loads((folder / INDEX_NAME).read_text())
    for entry in (raw, raw["splits"]["train"], raw["splits"]["train"]["shards"][0]):
        entry.pop(field, None)
    (folder / INDEX_NAME).write_text(json.dumps(raw))
    with pytest.raises(DataError, match=rf"^{folder / INDEX_NAME}: schema 2 index without '{field}': re-run `mtl "
                                        r"prepare` to rewrite it$"):
        load_index(folder)


def test_a_null_protocol_is_not_the_default_one(tmp_path):
    with pytest.raises(DataError, match="schema 2 index without 'protocol'"):
        load_index(write_index(tmp_path / "shards", protocol=None))


def test_check_protocol_names_the_shards_both_protocols_and_the_way_out(tmp_path):
    index = load_index(write_index(tmp_path / "shards"))
    index.check_protocol("abaw3")
    with pytest.raises(DataError) as caught:
        index.check_protocol("abaw2020")
    assert str(caught.value) == (f"shards {tmp_path / 'shards'} hold protocol abaw3 labels, but data.protocol is "
                                 "abaw2020 (set data.protocol=abaw3, or prepare shards under abaw2020)")
    with pytest.raises(DataError, match=r"but the teacher t\.pt's data\.protocol is abaw2020$"):
        index.check_protocol("abaw2020", where="the teacher t.pt's data.protocol")


def test_check_shards_names_the_first_bad_shard_and_counts_the_others(tmp_path):
    folder = write_index(tmp_path / "shards")
    index = load_index(folder)
    index.check_shards(checksum=True)
    (folder / "val-000000.tar").write_bytes(b"val      X")  # the same size: only the checksum sees it
    assert index.shard_problems() == []
    assert index.shard_problems(checksum=True) == [f"{folder / 'val-000000.tar'}: SHA-256 differs from index.json "
                                                   "(corrupt)"]
    (folder / "train-000000.tar").write_bytes(b"train")
    with pytest.raises(DataError) as caught:
        index.check_shards(checksum=True)
    assert str(caught.value) == (f"{folder / 'train-000000.tar'}: 5 bytes, index.json says 10 (truncated or "
                                 f"replaced) (and 1 more shard(s); `mtl check-shards {folder}` lists them)")
    (folder / "train-000000.tar").unlink()
    assert index.shard_problems()[0] == f"{folder / 'train-000000.tar'}: missing"
