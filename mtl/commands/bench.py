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
@click.option("--receive-batches", default=30, show_default=True, type=click.IntRange(1),
              help="Fetches timed per receive row (batch 20x3, the recipe's).")
@address_option
def bench_loader(out, videos, frames, workers, batch_size, batches, receive_batches, address) -> None:
    """Shard stream vs a per-file JPEG folder loader vs the bare JPEG decode loop; receive ms per batch in the
    training process, packed vs today's dict batch."""
    from mtl.bench.loader import run_loader_bench

    run_loader_bench(Path(out), videos=videos, frames=frames, workers=workers, batch_size=batch_size,
                     batches=batches, address=address, receive_batches=receive_batches)


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
@click.option("--views", default=0, show_default=True, type=click.IntRange(0),
              help="Also a student replaying stored soft labels of this many augmentation views (distill.views).")
@step_bench_options
def bench_distill(out, **options) -> None:
    """Student step cost (stored soft labels: centre view, or K views; teacher on the fly) against a teacher
    step, in one run."""
    from mtl.bench.train import run_distill_bench

    run_distill_bench(Path(out), **options)


@bench.command("gpu")
@click.option("--out", default="runs/bench-gpu", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="cuda", show_default=True, type=click.Choice(["cuda", "cpu"]))
@click.option("--quick", is_flag=True, help="Fewer steps and one loader-worker count (8): a few minutes on an H100.")
@click.option("--backbone", default="resnet50", show_default=True)
@click.option("--image-size", default=112, show_default=True, type=click.IntRange(16))
@click.option("--steps", default=None, type=click.IntRange(1), help="Timed steps per training row [30; --quick 20].")
@click.option("--warmup", default=None, type=click.IntRange(1), help="Warm-up steps per training row [5].")
@click.option("--large-batch", default=256, show_default=True, type=click.IntRange(1))
@click.option("--loader-workers", default=None, help="Loader-worker counts of the stream rows [4,8,12; --quick 8].")
@click.option("--check-steps", default=50, show_default=True, type=click.IntRange(1),
              help="Steps of the loss rows (graph vs eager, new vs today).")
@click.option("--cpus", default=4, show_default=True, type=click.IntRange(1), help="Threads of the training rows.")
@click.option("--videos", default=16, show_default=True, type=click.IntRange(2), help="Synthetic videos.")
@click.option("--frames", default=100, show_default=True, type=click.IntRange(1), help="Mean frames per video.")
@click.option("--infer-videos", default=4, show_default=True, type=click.IntRange(2),
              help="Synthetic videos of the soft-label and predict rows (long ones: shards of thousands).")
@click.option("--infer-frames", default=None, type=click.IntRange(1),
              help="Mean frames per video of those rows [5000; --quick 2500].")
@click.option("--json", "json_file", default=None, type=click.Path(dir_okay=False), help="Also save the table.")
@click.option("--skip", multiple=True, metavar="TEXT", help="Skip the rows whose name contains TEXT (repeatable), "
                                                             "e.g. --skip Ray.")
@address_option
def bench_gpu(out, loader_workers, json_file, **options) -> None:
    """One GPU, today's step as the baseline: compute-only img/s (eager today / sync-free + fused / CUDA graph;
    batch 20x3 and a large one), the shard stream through the graph step, kernels and host ms per step, receive
    ms per batch, soft labels and predict (model loaded), two trainings per GPU, graph vs eager losses."""
    from mtl.bench.gpu import run_gpu_bench

    try:
        workers = tuple(int(w) for w in loader_workers.split(",")) if loader_workers else None
    except ValueError:
        raise click.BadParameter(f"{loader_workers!r}: expected integers separated by commas",
                                 param_hint="--loader-workers") from None
    run_gpu_bench(Path(out), loader_workers=workers, json_file=Path(json_file) if json_file else None, **options)


@bench.command("scale")
@click.option("--out", default="runs/bench-scale", show_default=True, type=click.Path(file_okay=False))
@click.option("--sizes", default="10000,30000,100000", show_default=True, help="Frame counts, comma separated.")
@click.option("--image-size", default=48, show_default=True, type=click.IntRange(16),
              help="Synthetic face size (Aff-Wild2's are 112).")
@click.option("--backbone", default="test_resnet", show_default=True, help="Backbone of the untrained teacher.")
@click.option("--json", "json_file", default=None, type=click.Path(dir_okay=False), help="Also save the table.")
@address_option
def bench_scale(out, sizes, image_size, backbone, json_file, address) -> None:
    """Prepare, index, stream, soft labels, evaluation and memory at three data-set sizes; slopes and the
    extrapolation to Aff-Wild2."""
    from mtl.bench.scale import run_scale_bench

    try:
        frames = [int(size) for size in sizes.split(",")]
    except ValueError:
        raise click.BadParameter(f"{sizes!r}: expected integers separated by commas", param_hint="--sizes") from None
    run_scale_bench(Path(out), frames, image_size=image_size, backbone=backbone, address=address,
                    json_file=Path(json_file) if json_file else None)


@bench.command("predict")
@click.option("--out", default="runs/bench-predict", show_default=True, type=click.Path(file_okay=False))
@click.option("--images", default=1500, show_default=True, type=click.IntRange(1), help="Face images (frames).")
@click.option("--videos", default=3, show_default=True, type=click.IntRange(1), help="Video folders they fill.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1), help="Ray actors of both Ray rows.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--image-size", default=112, show_default=True, type=click.IntRange(16),
              help="Face image size and the untrained model's input size.")
@click.option("--model", default=None, help="A model file `mtl predict` reads (default: an untrained --backbone).")
@click.option("--backbone", default="test_resnet", show_default=True, help="Backbone of the untrained model.")
@click.option("--device", default=None, type=click.Choice(["cuda", "cpu"]), help="Default: cuda when available.")
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(1),
              help="Rounds, rows interleaved; each row's fastest is kept.")
@click.option("--json", "json_file", default=None, type=click.Path(dir_okay=False), help="Also save the table.")
@address_option
def bench_predict(out, json_file, **options) -> None:
    """Folder prediction: in this process vs a Ray actor pool (`mtl predict --address`) vs Ray Data map_batches;
    same images, model and device."""
    from mtl.bench.predict import run_predict_bench

    run_predict_bench(Path(out), json_file=Path(json_file) if json_file else None, **options)


@bench.command("fidelity")
@click.option("--out", default="runs/bench-fidelity", show_default=True, type=click.Path(file_okay=False),
              help="The grid's folder: data sets and one run per cell (kept for any grid run there), NAME.md and "
                   "NAME.json.")
@click.option("--name", default="fidelity", show_default=True,
              help="The grid's name: several grids (e.g. ablations) can share --out, its data sets and cells.")
@click.option("--size", default="small", show_default=True, type=click.Choice(["tiny", "small", "full"]),
              help="Data per cell: tiny (tests), small (development), full (the record).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Data and training seeds, comma separated.")
@click.option("--levels", default="demo,harsh", show_default=True,
              help="Missingness levels, comma separated: demo (0.6/0.3/0.1 of training videos annotated for 1/2/3 "
                   "tasks), harsh (0.9/0.1/0), or NAME=P1/P2/P3.")
@click.option("--protocols", default="abaw2020,abaw3", show_default=True, help="Label protocols, comma separated.")
@click.option("--preset", default="demo", show_default=True, help="The config every cell starts from.")
@click.option("--variant", "variants", multiple=True, metavar="'NAME[: key=value ...]'",
              help="A method variant: dotted config overrides for every cell (repeatable; default one 'base' "
                   "variant without overrides). The first variant's teacher is reused by the others where they "
                   "leave it unchanged.")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(1), help="Pipelines at a time.")
@click.option("--replicates", default=1000, show_default=True, type=click.IntRange(10),
              help="Video-bootstrap replicates of the pooled intervals.")
@click.option("--report-only", is_flag=True, help="Pool the cells already done; run nothing.")
@address_option
def bench_fidelity(out, name, size, seeds, levels, protocols, preset, variants, parallel, replicates, report_only,
                   address) -> None:
    """The whole method over seeds x missingness levels x protocols x variants on synthetic data (one Ray task per
    pipeline, resumable), then student - teacher, ensemble - mean student and ensemble - selected student pooled
    across seeds with video-bootstrap intervals: NAME.md and NAME.json in --out."""
    from mtl.bench.fidelity import LEVELS, Grid, Variant, parse_level, parse_variant, run_grid
    from mtl.bench.fidelity_report import markdown, pool_grid

    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: expected integers separated by commas", param_hint="--seeds") from None
    task_counts, level_names = dict(LEVELS), []
    for text in levels.split(","):
        level, shares = parse_level(text)
        if shares is not None:
            task_counts[level] = shares
        level_names.append(level)
    grid = Grid(out=out, name=name, size=size, seeds=seed_list, levels=tuple(level_names),
                protocols=tuple(protocols.split(",")), variants=tuple(parse_variant(v) for v in variants) or (Variant("base"),), preset=preset,
                task_counts=task_counts)
    grid.check()
    if not report_only:
        run_grid(grid, parallel=parallel, address=address)
    elif not (Path(out) / f"{name}.grid.json").is_file():
        raise click.BadParameter(f"{out} holds no grid {name!r} ({name}.grid.json) to report on",
                                 param_hint="--out/--name")
    click.echo(markdown(pool_grid(out, name, replicates=replicates)))


@bench.command("demo")
@click.option("--out", default="runs/bench-demo", show_default=True, type=click.Path(file_okay=False),
              help="The demo's folder (replaced); its console output goes to OUT.log.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05),
              help="Seconds between memory samples.")
@click.option("--json", "json_file", default=None, type=click.Path(dir_okay=False), help="Also save the result.")
@click.argument("overrides", nargs=-1)
def bench_demo(out, seed, interval, json_file, overrides) -> None:
    """`mtl demo` as a user runs it: wall time per stage and peak memory, system-wide above idle and per kind of
    process (the driver, Ray Train workers, Ray's own processes), sampled from /proc (Linux). OVERRIDES go to the
    demo."""
    import shutil

    from mtl import storage
    from mtl.bench.demo import format_result, run_demo_bench

    shutil.rmtree(out, ignore_errors=True)
    result = run_demo_bench(Path(out), seed, interval, overrides)
    click.echo(format_result(result))
    if json_file:
        storage.write_json(json_file, result)
        click.echo(f"wrote {json_file}")
    if result["exit"] != 0:
        raise click.ClickException(f"mtl demo failed (exit {result['exit']}): see {out}.log")


@bench.command("detect")
@click.option("--detectors", default="mtcnn,haar", show_default=True,
              help="Face detectors, comma separated: registered names or model files (FILE.onnx YuNet, FILE.xml "
                   "cascade), as `mtl predict --detector` takes them.")
@click.option("--scenes", default=100, show_default=True, type=click.IntRange(1), help="Scenes per set.")
@click.option("--size", default=320, show_default=True, type=click.IntRange(64), help="Scene side, pixels.")
@click.option("--max-faces", default=3, show_default=True, type=click.IntRange(1),
              help="A scene with faces asks for 1 to this many (fewer are drawn where they do not fit).")
@click.option("--units", default="14,40", show_default=True,
              help="Smallest and largest face, pixels per face unit (a face is about 2 units high).")
@click.option("--face-free", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="Share of face-free scenes per set.")
@click.option("--max-angle", default=25.0, show_default=True, type=click.FloatRange(0, 90),
              help="The rotated set turns faces by up to ± this many degrees.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--least-iou", default=0.3, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="A face counts as found by a detection overlapping its true box this much.")
@click.option("--json", "json_file", default=None, type=click.Path(dir_okay=False), help="Also save the result.")
def bench_detect(detectors, scenes, size, max_faces, units, face_free, max_angle, seed, least_iou,
                 json_file) -> None:
    """The face detectors of `mtl predict --media` on two seeded sets of generated scenes, upright faces and faces
    turned in the image plane: recall, false positives (on face-free scenes too), median ms per image, and the
    detector box against the true face box."""
    from mtl.bench.detect import Scenes, run_detect_bench

    try:
        smallest, largest = (float(u) for u in units.split(","))
    except ValueError:
        raise click.BadParameter(f"{units!r}: expected two numbers separated by a comma",
                                 param_hint="--units") from None
    if not 0 < smallest <= largest:
        raise click.BadParameter(f"{units!r}: expected 0 < smallest <= largest", param_hint="--units")
    names = [d.strip() for d in detectors.split(",") if d.strip()]
    if not names:
        raise click.BadParameter("name at least one detector", param_hint="--detectors")
    run_detect_bench(names, Scenes(scenes, size, max_faces, (smallest, largest), face_free, max_angle, seed),
                     least_iou, Path(json_file) if json_file else None)


COMMANDS = [bench]
