"""The shard index: a `pipe:` command as a shard root is refused in one line (issue #20.10)."""

import pytest
from click.testing import CliRunner

from mtl.cli import main
from mtl.data.index import load_index
from mtl.errors import DataError


def test_a_pipe_command_is_not_a_shard_folder(tmp_path):
    with pytest.raises(DataError, match="a pipe: command streams one file, not a shard folder"):
        load_index("pipe:curl -s https://example.invalid/shards")
    result = CliRunner().invoke(main, ["train", f"run.dir={tmp_path / 'run'}", "data.shards=pipe:cat x"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "not a shard folder" in result.output
