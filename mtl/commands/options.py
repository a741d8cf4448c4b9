"""Options and output helpers shared by the subcommands."""

from __future__ import annotations

import click

address_option = click.option("--address", default=None, envvar="RAY_ADDRESS",
                              help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray).")


config_option = click.option("--config", "config_source", default="demo", show_default=True,
                             help="Config file, or a packaged preset name (demo, paper).")



def format_mapping(mapping: dict, indent: int = 0) -> str:
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(format_mapping(value, indent + 2))
        else:
            lines.append(" " * indent + f"{key}: {value}")
    return "\n".join(lines)

