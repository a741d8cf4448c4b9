"""The CLI's error policy for a full disk: one line `error: FILE: no space left on device (N MB free on MOUNT)`, exit
code 2, whether the write went through mtl.storage (DiskFull) or not (an OSError with ENOSPC or EDQUOT)."""

from __future__ import annotations

import errno
import os
import re

import click
import pytest
from click.testing import CliRunner

from mtl.cli import _Group
from mtl.storage import DiskFull


def run(error: BaseException):
    @click.group(cls=_Group)
    def cli() -> None:
        pass

    @cli.command()
    def write() -> None:
        raise error

    return CliRunner().invoke(cli, ["write"])


@pytest.mark.parametrize("code,what", [(errno.ENOSPC, "no space left on device"),
                                       (errno.EDQUOT, "disk quota exceeded")])
def test_a_full_disk_is_one_line_naming_the_file_and_exit_code_2(tmp_path, code, what):
    target = tmp_path / "out" / "state.pt"
    for error in (OSError(code, os.strerror(code), str(target)), DiskFull.at(target, code)):
        result = run(error)
        assert result.exit_code == 2, result.output
        assert re.fullmatch(rf"error: {re.escape(str(target))}: {what} \(\d+\.\d MB free on /\S*\)\n", result.output)


def test_a_full_disk_without_a_file_name_and_other_os_errors():
    result = run(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert result.exit_code == 2 and result.output == f"error: {os.strerror(errno.ENOSPC)}\n"
    result = run(PermissionError(errno.EACCES, "Permission denied", "/x"))
    assert result.exit_code == 1 and isinstance(result.exception, PermissionError)  # not an input error: raised
