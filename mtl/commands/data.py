"""Data commands: `mtl synth`, `mtl prepare`, `mtl check-shards`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mtl.commands.options import address_option, config_overrides, format_mapping, key_option, path_option
from mtl.config import Config, PrepareConfig
from mtl.errors import ConfigError
from mtl.data.sources.base import SOURCES
from mtl.labels import DEFAULT_PROTOCOL, PROTOCOLS

protocol_choice = click.Choice(sorted(PROTOCOLS))


def parse_task_counts(text: str | None) -> tuple[float, float, float] | None:
    """`--task-counts P1,P2,P3` as three shares (ConfigError naming the flag, exit 2, when it is not)."""
    from mtl.data.synth.plan import SHARES, check_task_counts

    try:
        return None if text is None else check_task_counts([float(part) for part in text.split(",")])
    except ValueError:
        raise ConfigError(f"--{SHARES.replace('_', '-')}, got {text!r}") from None


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@click.option("--videos", default=24, show_default=True, type=click.IntRange(1), help="Number of videos.")
@click.option("--frames", default=200, show_default=True, type=click.IntRange(1), help="Mean frames per video.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of everything generated.")
@click.option("--image-size", default=112, show_default=True, type=click.IntRange(16), help="Face crop size.")
@click.option("--protocol", default=DEFAULT_PROTOCOL, show_default=True, type=protocol_choice,
              help="Label protocol: abaw2020 writes the ABAW-2020 layout, abaw3 the s-Aff-Wild2 one.")
@click.option("--task-counts", metavar="P1,P2,P3",
              help="Shares of the training videos annotated for exactly 1, 2 and 3 tasks (summing to 1, e.g. "
                   "0.9,0.1,0); exact wherever the two-person videos allow, every task kept in training. Default: "
                   "each video draws its count with probabilities 0.6, 0.3, 0.1.")
@click.option("--val-videos", type=int, metavar="N",
              help="Number of validation videos (all tasks annotated), from 1 to videos - 3. Default: 22 % of "
                   "--videos.")
def synth(out: str, videos: int, frames: int, seed: int, image_size: int, protocol: str, task_counts: str | None,
          val_videos: int | None) -> None:
    """Synthetic dataset in the Aff-Wild2 ABAW-2020 layout (annotations/ + cropped_aligned/), or with `--protocol
    abaw3` the s-Aff-Wild2 layout (train_set.txt, validation_set.txt + cropped_aligned/; `mtl prepare
    --s-affwild2`). Two-person videos count as two videos, in --videos, --val-videos and --task-counts alike."""
    from mtl.data.synth.generator import plan_videos, synthesize

    shares = parse_task_counts(task_counts)
    try:  # a --val-videos out of range, or shares that would leave a task without a training video
        plan_videos(videos, seed, shares, val_videos)
    except ValueError as err:
        raise ConfigError("--" + str(err).replace("_", "-", 1)) from None
    summary = synthesize(out, videos=videos, frames=frames, seed=seed, image_size=image_size, protocol=protocol,
                         task_counts=shares, val_videos=val_videos)
    click.echo(format_mapping(summary))
    click.echo(f"wrote {out}")


def source_options(function):
    """One input folder option per registered source (its `flag`, dest its name), and `--source NAME=DIR` for
    any."""
    function = path_option("--source", "named", role="input", multiple=True, metavar="NAME=DIR",
                           help="Root of any registered source, e.g. a plugin's (repeatable).")(function)
    folder = click.Path(exists=True, file_okay=False)
    for name, source in sorted(SOURCES.items(), reverse=True):  # the last applied is listed first
        function = path_option(source.flag, name, role="input", type=folder, help=source.help)(function)
    return function


def source_roots(flags: dict, named: tuple) -> dict[str, str]:
    """{source name: root} of the source flags given and the `--source NAME=DIR` pairs; at least one."""
    roots = {name: root for name, root in flags.items() if root}
    for pair in named:
        name, _, root = pair.partition("=")
        if not name or not root:
            raise click.BadParameter(f"{pair!r} is not NAME=DIR", param_hint="--source")
        if not Path(root).is_dir():
            raise click.BadParameter(f"{root!r} is not a folder", param_hint="--source")
        if name in roots:
            raise click.UsageError(f"source {name!r} is given twice")
        roots[name] = root
    if not roots:
        flags = ", ".join(source.flag for _, source in sorted(SOURCES.items()))
        raise click.UsageError(f"give at least one source: {flags} or --source NAME=DIR")
    return roots


def resolve_protocol(given: str | None, roots: dict[str, str], stated: str = "") -> str:
    """The protocol to prepare under: `given` (`stated` names where: `--protocol X` by default), else the one the
    sources' folders hold (abaw3 for --s-affwild2 or an ABAW3+ per-task --affwild2 release), else abaw2020.
    UsageError naming both when they disagree."""
    detected: dict[str, str] = {}  # protocol -> the source option that holds it
    for name, root in roots.items():
        if name not in SOURCES:
            continue  # prepare names every unknown source
        source = SOURCES.get(name)
        found = source.detected_protocol(Path(root))
        if found is not None:
            detected.setdefault(found, f"{source.flag} {root}")
    if given is not None:
        for found, where in detected.items():
            if found != given:
                raise click.UsageError(f"{stated or f'--protocol {given}'}, but {where} holds {found} labels")
        return given
    if len(detected) > 1:
        (a, where_a), (b, where_b) = sorted(detected.items())[:2]
        raise click.UsageError(f"{where_a} holds {a} labels, but {where_b} holds {b} labels")
    return next(iter(detected), DEFAULT_PROTOCOL)


def output_problem(location: str) -> str | None:
    """Why shards cannot be written to `location` (a stream URL: read-only; an existing file), else None."""
    from mtl import storage

    if storage.is_stream(location):
        return f"{location!r} is read-only (http and pipe: shards can be read, not written)"
    if storage.local_path(location) is not None and Path(storage.local_path(location)).is_file():
        return f"{location!r} is a file, not a folder"
    return None


class OutputLocation(click.ParamType):
    """A folder to write, or a bucket URI (s3://, gs://, file://); stream URLs (http, pipe:) are read-only."""

    name = "DIR|URI"

    def convert(self, value, param, ctx):
        problem = output_problem(str(value))
        if problem:
            self.fail(problem, param, ctx)
        return str(value)


def prepare_config(config_source: str | None, overrides: list[str]) -> tuple[Config, bool]:
    """(config, whether it states data.protocol) of `mtl prepare`: `config_source` (default: no file, the schema's
    defaults) with `overrides`; its paths as given (data.shards is written by this process). ConfigError when
    data.shards, the folder to write, is unset or cannot be written."""
    from mtl.config import read_yaml, with_overrides

    data = read_yaml(config_source) if config_source else {}
    cfg = with_overrides(data, overrides, absolute=False)
    if not cfg.data.shards:
        raise ConfigError("config key 'data.shards': required, the folder or bucket to write (--out DIR|URI)")
    problem = output_problem(cfg.data.shards)
    if problem:
        raise ConfigError(f"config key 'data.shards': {problem}")
    return cfg, "protocol" in (data.get("data") or {})


_DEFAULTS = PrepareConfig()


@click.command()
@click.option("--config", "config_source", default=None,
              help="Config file or preset whose prepare.* keys (and data.protocol, data.shards) it runs with "
                   "[default: the schema's defaults]; KEY=VALUE arguments override it.")
@source_options
@key_option("--out", key="data.shards", type=OutputLocation(),
            help="Shard folder or bucket URI (s3://bucket/prefix, gs://...) to write (required, here or in the "
                 "config).")
@key_option("--shard-size", key="prepare.shard_size", type=click.IntRange(1),
            help=f"Samples per shard (default {_DEFAULTS.shard_size}).")
@key_option("--image-size", key="prepare.image_size", type=click.IntRange(16),
            help=f"Stored face size, default {_DEFAULTS.image_size} (Aff-Wild2's 112 px faces are copied as they "
                 "are).")
@path_option("--images", role="input", type=click.Path(exists=True, file_okay=False),
             help="Image folder of --s-affwild2 when it is not DIR/cropped_aligned.")
@key_option("--protocol", key="data.protocol", type=protocol_choice,
            help="Label protocol (default: the config's data.protocol when it states one, else abaw3 with "
                 "--s-affwild2 or an ABAW3+ --affwild2 release, else abaw2020).")
@click.option("--verify", is_flag=True, help="Re-read every shard written and check it against index.json.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@address_option
def prepare(config_source, overrides, named, images, verify, address, **params) -> None:
    """Raw datasets -> WebDataset shards (train-*.tar, val-*.tar) + index.json, in parallel on Ray. Settings:
    prepare.shard_size, prepare.image_size, data.protocol and data.shards (the output), from --config and
    KEY=VALUE overrides or the flags that set them."""
    from mtl import storage
    from mtl.data.prepare import format_summary, prepare as run_prepare
    from mtl.jobs.ray_session import RaySession

    cfg, states_protocol = prepare_config(config_source, config_overrides(params, overrides))
    roots = source_roots({name: params[name] for name in SOURCES.names() if name in params}, named)
    if images and "s_affwild2" not in roots:
        raise click.UsageError("--images is the image folder of --s-affwild2, which is not given")
    given = cfg.data.protocol if states_protocol else None
    stated = f"--protocol {given}" if params["protocol"] == given else f"data.protocol={given}"
    out = cfg.data.shards
    index = run_prepare(roots, out, shard_size=cfg.prepare.shard_size, image_size=cfg.prepare.image_size,
                        session=RaySession(address), protocol=resolve_protocol(given, roots, stated),
                        images={"s_affwild2": images} if images else None)
    click.echo(format_summary(index))
    click.echo(f"wrote {storage.join(out, 'index.json')}")
    if verify:
        check_shards_command.callback(out)


@click.command("check-shards")
@click.argument("shards")
def check_shards_command(shards: str) -> None:
    """Check every shard of SHARDS (a folder, bucket or http(s) URI with index.json) against the sizes and SHA-256
    checksums index.json records; one line per bad shard, exit code 2 if any."""
    from mtl.data.index import load_index

    index = load_index(shards)
    problems = index.shard_problems(checksum=True)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    total = sum(len(index.shards[split]) for split in index.shards)
    if problems:
        sys.exit(2)
    click.echo(f"{total} shard(s) of {shards} match index.json")


COMMANDS = [synth, prepare, check_shards_command]
