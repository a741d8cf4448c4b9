"""The `mtl` command line: one subcommand per stage (see README "Command line")."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import click

from mtl import runtime_defaults, storage
from mtl.config import ConfigError, PrepareConfig
from mtl.data.sources.base import SOURCES
from mtl.jobs.submit import COMMANDS as SUBMITTABLE
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


address_option = click.option("--address", default=None, envvar="RAY_ADDRESS",
                              help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray).")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@click.option("--videos", default=24, show_default=True, type=click.IntRange(1), help="Number of videos.")
@click.option("--frames", default=200, show_default=True, type=click.IntRange(1), help="Mean frames per video.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of everything generated.")
@click.option("--image-size", default=112, show_default=True, type=click.IntRange(16), help="Face crop size.")
def synth(out: str, videos: int, frames: int, seed: int, image_size: int) -> None:
    """Synthetic dataset in the Aff-Wild2 ABAW-2020 layout (annotations/ + cropped_aligned/)."""
    from mtl.data.synth.generator import synthesize

    summary = synthesize(out, videos=videos, frames=frames, seed=seed, image_size=image_size)
    click.echo(format_mapping(summary))
    click.echo(f"wrote {out}")


def source_options(function):
    """One folder option per registered source (its `flag`, dest its name), and `--source NAME=DIR` for any."""
    function = click.option("--source", "named", multiple=True, metavar="NAME=DIR",
                            help="Root of any registered source, e.g. a plugin's (repeatable).")(function)
    folder = click.Path(exists=True, file_okay=False)
    for name, source in sorted(SOURCES.items(), reverse=True):  # the last applied is listed first
        function = click.option(source.flag, name, type=folder, help=source.help)(function)
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


@main.command()
@source_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Shard folder to write.")
@click.option("--shard-size", default=PrepareConfig().shard_size, show_default=True, type=click.IntRange(1),
              help="Samples per shard.")
@click.option("--image-size", default=PrepareConfig().image_size, show_default=True, type=click.IntRange(16),
              help="Stored face size (Aff-Wild2's 112 px faces are copied as they are).")
@click.option("--verify", is_flag=True, help="Re-read every shard written and check it against index.json.")
@address_option
def prepare(named, out, shard_size, image_size, verify, address, **flags) -> None:
    """Raw datasets -> WebDataset shards (train-*.tar, val-*.tar) + index.json, in parallel on Ray."""
    from mtl.data.prepare import format_summary, prepare as run_prepare

    index = run_prepare(source_roots(flags, named), out, shard_size=shard_size, image_size=image_size,
                        address=address)
    click.echo(format_summary(index))
    click.echo(f"wrote {out}/index.json")
    if verify:
        check_shards_command.callback(out)


@main.command("check-shards")
@click.argument("shards")
def check_shards_command(shards: str) -> None:
    """Check every shard of SHARDS (a folder or URI with index.json) against the sizes and SHA-256 checksums
    index.json records; one line per bad shard, exit code 2 if any."""
    from mtl.data.index import load_index
    from mtl.data.verify import shard_problems, unverifiable

    index = load_index(shards)
    problems = shard_problems(index, checksum=True)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    total = sum(len(index.shards[split]) for split in index.shards)
    if problems:
        sys.exit(2)
    unchecked = unverifiable(index)
    note = f" ({unchecked} without a recorded checksum: written by an older mtl prepare)" if unchecked else ""
    click.echo(f"{total} shard(s) of {shards} match index.json{note}")


@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=int)
@address_option
def demo(out: str, seed: int, address) -> None:
    """Synthetic data through every stage available, on a local Ray (or --address)."""
    from mtl.demo import run_demo

    run_demo(Path(out), seed=seed, address=address)


config_option = click.option("--config", "config_source", default="demo", show_default=True,
                             help="Config file, or a packaged preset name (demo, paper).")


@main.command(context_settings={"ignore_unknown_options": False})
@config_option
@click.argument("overrides", nargs=-1)
@address_option
def train(config_source: str, overrides: tuple, address) -> None:
    """Train the role the config names (train.role) on Ray Train; OVERRIDES are dotted key=value pairs."""
    from mtl.config import load_config
    from mtl.train.driver import train as run_train

    cfg = load_config(config_source, overrides)
    outcome = run_train(cfg, address)
    metrics = outcome["metrics"]
    click.echo(f"best epoch {metrics.get('epoch')}: " + "  ".join(
        f"{t} {metrics[f'val_{t}']:.4f}" for t in ("au", "expr", "va", "total") if f"val_{t}" in metrics))
    click.echo(f"wrote {outcome['best']}")


@main.command()
@config_option
@click.argument("overrides", nargs=-1)
@address_option
def pipeline(config_source: str, overrides: tuple, address) -> None:
    """Teacher -> soft labels -> students -> ensemble -> report; re-run to resume."""
    from mtl.config import load_config
    from mtl.stages.pipeline import run_pipeline
    from mtl.eval.report import format_table

    cfg = load_config(config_source, overrides)
    report = run_pipeline(cfg, address)
    click.echo(format_table(report))
    click.echo(f"report: {storage.join(cfg.run.dir, 'report.md')}")


@main.command()
@config_option
@click.option("--space", "space_path", default=None, type=click.Path(dir_okay=False),
              help="Search space YAML (tune/NAME.yaml); default: tune.space of the config.")
@click.argument("overrides", nargs=-1)
@address_option
def tune(config_source: str, space_path: Optional[str], overrides: tuple, address) -> None:
    """Ray Tune search over a space, every trial a Ray Train run; re-run the same command to resume."""
    from mtl.stages.search import format_results, load_search, run_search

    cfg, space = load_search(config_source, space_path, overrides)
    click.echo(format_results(run_search(cfg, space, address)))


@main.command("soft-labels")
@config_option
@click.argument("overrides", nargs=-1)
@address_option
def soft_labels(config_source: str, overrides: tuple, address) -> None:
    """The teacher's outputs on every training sample (distill.teacher -> distill.soft_labels), on Ray."""
    from mtl.config import load_config
    from mtl.jobs.ray_session import ensure_ray
    from mtl.stages.soft_labels import compute_soft_labels
    from mtl.runs import soft_labels_dir, teacher_path

    cfg = load_config(config_source, overrides)
    ensure_ray(address)
    manifest = compute_soft_labels(teacher_path(cfg), cfg.data.shards, soft_labels_dir(cfg), cfg.train.use_gpu)
    click.echo(f"{sum(manifest['shards'].values())} samples in {len(manifest['shards'])} shards -> "
               f"{soft_labels_dir(cfg)}")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="An exported ensemble (RUN/ensemble/ensemble.pt) or one best.pt.")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False),
              help="A folder of face images (one video) or of sub-folders (one video each).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Prediction folder to write.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
def predict(model_path: str, images: str, out: str, batch_size: int) -> None:
    """ABAW-2020 prediction files (AU/, EXPR/, VA/ per video) and predictions.csv for a folder of faces."""
    from mtl.serve.predict import predict_folder

    summary = predict_folder(model_path, images, out, batch_size)
    click.echo(f"{summary['frames']} frames of {len(summary['videos'])} videos -> {out}; "
               f"{len(summary['unreadable'])} unreadable")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A best.pt written by training.")
@click.option("--shards", required=True, type=click.Path(file_okay=False), help="Shard folder (index.json).")
@click.option("--split", default="val", show_default=True, type=click.Choice(["train", "val"]))
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the scores as JSON here.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where the model runs (cuda: bf16 autocast, channels_last).")
def evaluate(checkpoint: str, shards: str, split: str, out: Optional[str], device: str) -> None:
    """Score a checkpoint on a split: per-AU F1 and accuracy, EXPR confusion matrix, CCCs."""
    from mtl.eval.evaluate import evaluate_checkpoint, format_scores

    result = evaluate_checkpoint(checkpoint, shards, split, device=device)
    click.echo(format_scores(result))
    if out:
        storage.write_json(Path(out), result)
        click.echo(f"wrote {out}")


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--address", default=None,
              help="Ray job API address, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS).")
@click.option("--command", "command", default="pipeline", show_default=True,
              type=click.Choice(SUBMITTABLE), help="The mtl command the job runs.")
@config_option
@click.option("--run-dir", default=None, help="The run's storage location (sets run.dir): s3://, gs:// or a shared "
                                              "absolute path.")
@click.option("--shards", default=None, help="Shard location (sets data.shards).")
@click.option("--working-dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder shipped as the job's working_dir (this checkout).")
@click.option("--no-working-dir", is_flag=True, help="Ship nothing: run the code installed on the cluster.")
@click.option("--pip", multiple=True, help="Extra pip requirement installed for the job (repeatable).")
@click.option("--env", "env_pairs", multiple=True,
              help="KEY=VALUE (or KEY: take it from this shell) set in the job's environment (repeatable).")
@click.option("--runtime-env", "runtime_env_file", type=click.Path(dir_okay=False, exists=True),
              help="A runtime_env YAML to start from (e.g. cluster/runtime_env.yaml).")
@click.option("--submission-id", default=None, help="Job id (default: Ray picks one).")
@click.option("--wait", is_flag=True, help="Stream the logs until the job ends; exit 1 unless it succeeded.")
@click.option("--timeout", "timeout_s", default=None, type=click.FloatRange(0), help="With --wait: stop the job "
                                                                                     "after this many seconds.")
@click.option("--dry-run", is_flag=True, help="Print what would be submitted; submit nothing.")
@click.argument("overrides", nargs=-1)
def submit(address, command, config_source, run_dir, shards, working_dir, no_working_dir, pip, env_pairs,
           runtime_env_file, submission_id, wait, timeout_s, dry_run, overrides) -> None:
    """Run an mtl command (default: pipeline) as a Ray job on a running cluster, with a runtime environment."""
    import os

    import yaml

    from mtl.jobs.submit import JobFailed, build_submission, describe, submit as run_submit

    env = {}
    for pair in env_pairs:
        key, sep, value = pair.partition("=")
        if not sep and key not in os.environ:
            raise click.BadParameter(f"{key!r} is not set in this shell", param_hint="--env")
        env[key] = value if sep else os.environ[key]
    base = yaml.safe_load(Path(runtime_env_file).read_text()) if runtime_env_file else None
    submission = build_submission(config_source, overrides, command, run_dir, shards,
                                  None if no_working_dir else working_dir, pip, env, base, submission_id)
    if dry_run:
        click.echo(describe(submission, address))
        return
    try:
        outcome = run_submit(submission, address, wait=wait, timeout_s=timeout_s)
    except (JobFailed, ConnectionError) as err:  # ConnectionError: no job API at that address
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    click.echo(f"job {outcome['submission_id']}: {outcome['status']}")


@main.group()
def bench() -> None:
    """Benchmarks that print ratios against a baseline measured in the same run."""


@bench.command("loader")
@click.option("--out", default="runs/bench-loader", show_default=True, type=click.Path(file_okay=False))
@click.option("--videos", default=16, show_default=True, type=click.IntRange(1))
@click.option("--frames", default=150, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1), help="DataLoader workers.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--batches", default=40, show_default=True, type=click.IntRange(1), help="Batches timed per loader.")
@address_option
def bench_loader(out, videos, frames, workers, batch_size, batches, address) -> None:
    """Shard stream vs a per-file JPEG folder loader vs the bare JPEG decode loop."""
    from mtl.bench.loader import run_loader_bench

    run_loader_bench(Path(out), videos=videos, frames=frames, workers=workers, batch_size=batch_size,
                     batches=batches, address=address)


def step_bench_options(function):
    """Options shared by the benchmarks that time training steps."""
    for option in reversed([
        click.option("--steps", default=30, show_default=True, type=click.IntRange(1), help="Timed steps per run."),
        click.option("--warmup", default=5, show_default=True, type=click.IntRange(1)),
        click.option("--cpus", default=2, show_default=True, type=click.IntRange(1), help="Threads for every loop."),
        click.option("--repeats", default=2, show_default=True, type=click.IntRange(1)),
        click.argument("overrides", nargs=-1),
        address_option,
    ]):
        function = option(function)
    return function


@bench.command("train")
@click.option("--out", default="runs/bench-train", show_default=True, type=click.Path(file_okay=False))
@step_bench_options
def bench_train(out, **options) -> None:
    """One Ray Train worker vs a plain PyTorch loop: same model, data, batch (OVERRIDES adjust the demo config)."""
    from mtl.bench.train import run_train_bench

    run_train_bench(Path(out), **options)


@bench.command("distill")
@click.option("--out", default="runs/bench-distill", show_default=True, type=click.Path(file_okay=False))
@step_bench_options
def bench_distill(out, **options) -> None:
    """Student step cost (stored soft labels; teacher on the fly) against a teacher step, in one run."""
    from mtl.bench.train import run_distill_bench

    run_distill_bench(Path(out), **options)


def format_mapping(mapping: dict, indent: int = 0) -> str:
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(format_mapping(value, indent + 2))
        else:
            lines.append(" " * indent + f"{key}: {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
