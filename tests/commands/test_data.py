"""`mtl prepare` reads its settings from a config: `--config` + KEY=VALUE overrides (prepare.*, data.protocol,
data.shards the output), its flags aliases of those keys; `mtl synth` and `check-shards` keep their flags."""

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import write_affwild2
from tests.data.test_prepare_protocol import s_release
from mtl.cli import main
from mtl.commands.data import output_problem, prepare_config
from mtl.errors import ConfigError

VIDEOS = {"a": {"frames": 3, "expr": ["0", "1", "6"]}, "c": {"frames": 2, "split": "val", "expr": ["4", "5"]}}


def invoke(*args):
    return CliRunner().invoke(main, ["prepare", *map(str, args)])


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def shard_bytes(folder: Path) -> dict:
    """Each shard's SHA-256, and index.json less its summary (which records the sources' roots and the time)."""
    index = json.loads((folder / "index.json").read_text())
    index.pop("summary")
    return {"index": index, **{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.tar")}}


def test_the_config_sets_what_prepare_writes_and_a_flag_writes_what_its_override_does(tmp_path, ray_session):
    raw = write_affwild2(tmp_path / "raw", VIDEOS, size=40)
    config = write_config(tmp_path / "prep.yaml", f"prepare:\n  image_size: 24\n  shard_size: 1\n"
                                                 f"data:\n  shards: {tmp_path / 'from_config'}\n")
    result = invoke("--config", config, "--affwild2", raw)  # no --out: the config's data.shards
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'from_config'}/index.json" in result.output
    written = shard_bytes(tmp_path / "from_config")
    assert written["index"]["image_size"] == 24  # not the default 112
    assert [s["samples"] for s in written["index"]["splits"]["train"]["shards"]] == [1, 1, 1]  # not 5000
    result = invoke("--affwild2", raw, "--out", tmp_path / "flags", "--image-size", 24, "--shard-size", 1)
    assert result.exit_code == 0, result.output
    result = invoke("--affwild2", raw, f"data.shards={tmp_path / 'keys'}", "prepare.image_size=24",
                    "prepare.shard_size=1")
    assert result.exit_code == 0, result.output
    assert shard_bytes(tmp_path / "flags") == shard_bytes(tmp_path / "keys") == written


def test_flags_override_the_config_and_dotted_overrides_override_the_flags(tmp_path):
    config = write_config(tmp_path / "prep.yaml", "prepare:\n  image_size: 24\ndata:\n  shards: out\n")
    cfg, _ = prepare_config(str(config), ["prepare.image_size=32"])  # the alias --image-size 32
    assert (cfg.prepare.image_size, cfg.prepare.shard_size, cfg.data.shards) == (32, 5000, "out")  # as given
    cfg, _ = prepare_config(str(config), ["prepare.image_size=32", "prepare.image_size=48"])
    assert cfg.prepare.image_size == 48


def test_data_protocol_is_stated_only_by_a_config_or_an_override(tmp_path):
    assert prepare_config(None, ["data.shards=s"])[1] is False  # the schema's default: detected from the data
    assert prepare_config(None, ["data.shards=s", "data.protocol=abaw2020"])[1] is True
    assert prepare_config("abaw3", ["data.shards=s"])[1] is True  # the preset states abaw3
    assert prepare_config("paper", ["data.shards=s"])[1] is False


def test_a_config_stating_another_protocol_than_the_data_is_refused_naming_the_key(tmp_path):
    s_raw = s_release(tmp_path / "s")
    result = invoke("--s-affwild2", s_raw, "--out", tmp_path / "x", "data.protocol=abaw2020")
    assert result.exit_code == 2
    assert f"data.protocol=abaw2020, but --s-affwild2 {s_raw} holds abaw3 labels" in result.output
    old = write_affwild2(tmp_path / "old", {"v": {"frames": 1, "expr": ["1"]}})
    result = invoke("--config", "abaw3", "--affwild2", old, "--out", tmp_path / "x")
    assert result.exit_code == 2 and f"data.protocol=abaw3, but --affwild2 {old} holds abaw2020" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, line", [
    (["prepare.shard_sise=3"], "error: config key 'prepare.shard_sise': unknown key"),
    (["prepare.image_size=8"], "error: config key 'prepare.image_size': Input should be greater than or equal to 16 "
                               "(got 8)"),
    (["--config", "nowhere.yaml"], "error: config 'nowhere.yaml': no such file (packaged presets: demo, paper, "
                                   "abaw3)"),
])
def test_a_bad_key_fails_in_one_line_before_anything_runs(tmp_path, args, line):
    result = invoke("--affwild2", tmp_path, "--out", tmp_path / "s", *args)
    assert result.exit_code == 2 and result.output.strip() == line
    assert not (tmp_path / "s").exists()


def test_the_output_is_required_and_checked_wherever_it_is_given(tmp_path):
    result = invoke("--affwild2", tmp_path)
    assert result.exit_code == 2
    assert result.output.strip() == ("error: config key 'data.shards': required, the folder or bucket to write "
                                     "(--out DIR|URI)")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="'data.shards': '.*/file' is a file, not a folder"):
        prepare_config(None, [f"data.shards={tmp_path / 'file'}"])
    result = invoke("--affwild2", tmp_path, "--out", "https://host/shards")
    assert result.exit_code == 2 and "'https://host/shards' is read-only" in result.output  # the flag's check
    assert output_problem("s3://bucket/shards") is None and output_problem(str(tmp_path / "new")) is None
