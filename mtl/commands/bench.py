"""`mtl bench …`: benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

from pathlib import Path

import click

from mtl.commands.options import address_option


@click.group()
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


COMMANDS = [bench]
