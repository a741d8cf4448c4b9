"""The `mtl` command line: the group, its error policy, and the subcommands of `mtl.commands`."""

from __future__ import annotations

import os
import sys

import click

from mtl import console, runtime_defaults
from mtl.commands import bench, data, inference, models, runs
from mtl.errors import ConfigError, DataError
from mtl.storage import FULL_DISK_ERRNOS, DiskFull


class _Group(click.Group):
    """Turns input errors (bad data, bad config, missing files) and a full disk into one clear line and exit code 2
    (`error: FILE: no space left on device (N MB free on MOUNT)`)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (DataError, ConfigError, FileNotFoundError, FileExistsError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except OSError as err:
            cause = getattr(err, "cause", None) or err  # a Ray task's error: its cause
            if not isinstance(cause, OSError) or cause.errno not in FULL_DISK_ERRNOS:
                raise
            if not isinstance(cause, DiskFull) and cause.filename:  # a write outside mtl.storage that names its file
                cause = DiskFull.at(cause.filename, cause.errno)
            click.echo(f"error: {cause if isinstance(cause, DiskFull) else os.strerror(cause.errno)}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Everything on the console: Ray's, Ray Train's and wandb's output and debug logging.")
@click.version_option(package_name="mtl")
def main(verbose: bool) -> None:
    """Multitask emotion recognition (AUs, expression, valence-arousal) from incompletely labelled data, on Ray."""
    if verbose:
        os.environ.setdefault("WANDB_SILENT", "false")
    runtime_defaults()
    console.setup(verbose)  # quiet: progress and summaries here, Ray's and wandb's lines in RUN/logs/console.log


for _module in (data, runs, inference, models, bench):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":
    main()
