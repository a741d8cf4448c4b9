"""The `mtl` command line: the group, its error policy, and the subcommands of `mtl.commands`."""

from __future__ import annotations

import logging
import sys

import click

from mtl import runtime_defaults
from mtl.commands import bench, data, inference, models, runs
from mtl.config import ConfigError
from mtl.labels import DataError


class _Group(click.Group):
    """Turns input errors (bad data, bad config, missing files) into one clear line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (DataError, ConfigError, FileNotFoundError, FileExistsError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="mtl")
def main(verbose: bool) -> None:
    """Multitask emotion recognition (AUs, expression, valence-arousal) from incompletely labelled data, on Ray."""
    runtime_defaults()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


for _module in (data, runs, inference, models, bench):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":
    main()
