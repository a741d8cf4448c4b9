"""Inference commands: `mtl predict`, `mtl evaluate`."""

from __future__ import annotations

from typing import Optional

import click

from mtl import storage
from mtl.commands.options import config_of, config_overrides, key_option, path_option
from mtl.labels import PROTOCOLS

ray_address_option = click.option(
    "--address", default=None, envvar="RAY_ADDRESS",
    help="Run on this Ray cluster ('local': start a local Ray). Default: RAY_ADDRESS, else in this process.")


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="An exported ensemble (RUN/ensemble/ensemble.pt2), a .onnx or .pt2 from `mtl export`, or one "
                   "best.pt (TorchScript files, which can run code, are refused); a temporal (CNN-RNN) best.pt or "
                   "RUN/ensemble/ensemble_temporal.pt runs on windows (--images in this process only).")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="A folder of face images (one video) or of sub-folders (one video each).")
@click.option("--media", multiple=True, type=click.Path(exists=True),
              help="Photos and videos (mp4, mov, avi, mkv; folders of them): faces detected, tracked and aligned "
                   "-> OUT/faces.csv. Takes several paths: --media a.mp4 b.jpg (local --out only).")
@click.argument("more_media", nargs=-1, type=click.Path(exists=True))
@click.option("--detector", help="Face detector for --media: mtcnn (default), haar, or a model file "
                                 "(YuNet *.onnx, OpenCV cascade *.xml).")
@click.option("--abaw-files", is_flag=True, help="With --media: also the per-task ABAW AU/EXPR/VA files per tracked "
                                                 "face.")
@click.option("--out", required=True, help="Prediction folder to write: a local folder or a URI (s3://bucket/prefix).")
@click.option("--protocol", type=click.Choice(list(PROTOCOLS)),
              help="The label protocol the predictions must follow: abaw2020 (8 AUs, 7 classes) or abaw3 (12 AUs, 8 "
                   "classes with Other). The model's (its config's data.protocol) must be this one, else a usage "
                   "error naming both. Default: the model's.")
@click.option("--submission", metavar="FILE",
              help="With --images: also write the ABAW3+ multi-task challenge submission file here (a local path or a "
                   "URI; header 'image,valence,arousal,expression,aus', then 'video/00001.jpg,valence,arousal,"
                   "expression,AU...' per frame, AUs 0/1 at the model's thresholds); abaw3 models only (ABAW 2020's "
                   "submission is the AU/, EXPR/, VA/ files under --out).")
@click.option("--test-list", type=click.Path(exists=True, dir_okay=False),
              help="With --submission: the challenge's test list (one video/frame.jpg a line, header optional). Only "
                   "its frames are predicted, and the file follows its order [default: every frame under --images, "
                   "sorted]. A listed image missing under --images is an error naming it (no skip: the file needs "
                   "a line for every test frame).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where the model runs, as runtime.device says it [default: auto, cuda when there is a GPU (on Ray: "
                   "in the cluster), else cpu].")
@ray_address_option
@click.option("--workers", type=click.IntRange(1),
              help="Ray actors predicting (runs on Ray; default with --address: one per GPU with cuda, else per CPU).")
def predict(model_path: str, images: Optional[str], media: tuple[str, ...], more_media: tuple[str, ...],
            detector: Optional[str], abaw_files: bool, out: str, batch_size: int, device: Optional[str],
            protocol: Optional[str], submission: Optional[str], test_list: Optional[str], address: Optional[str],
            workers: Optional[int]) -> None:
    """ABAW prediction files (AU/, EXPR/, VA/ per video, in the model's label protocol) and predictions.csv for a
    folder of faces, and with --submission the ABAW3+ multi-task challenge file; or, with --media, faces.csv (per
    frame and face: box, track, AU/EXPR probabilities, valence, arousal) for photos and videos."""
    from mtl.serve.submission import ProtocolError

    device = None if device == "auto" else device
    if bool(images) == bool(media) or (more_media and not media):
        raise click.UsageError("give exactly one of --images FOLDER or --media PATH [PATH ...]")
    if test_list and not submission:
        raise click.UsageError("--test-list orders the --submission file: give --submission FILE too")
    try:
        if media:
            if address or workers:
                raise click.UsageError("--media runs in this process: --address and --workers apply to --images only")
            if submission:
                raise click.UsageError("--media writes faces.csv: --submission applies to --images only")
            predict_media_files([*media, *more_media], model_path, out, batch_size, device, detector, abaw_files,
                                protocol)
            return
        extra = {"protocol": protocol, "submission": submission, "test_list": test_list}
        if address or workers:
            from mtl.jobs.ray_session import RaySession
            from mtl.serve.batch import predict_folder_on_ray

            summary = predict_folder_on_ray(model_path, images, out, batch_size, device, workers,
                                            RaySession(address), **extra)
            where = f"{summary['workers']} Ray actor(s)"
        else:
            from mtl.serve.predict import predict_folder

            summary = predict_folder(model_path, images, out, batch_size, device, **extra)
            where = "this process"
    except ProtocolError as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"{summary['frames']} frames of {len(summary['videos'])} videos -> {out}; "
               f"{len(summary['unreadable'])} unreadable")
    if submission:
        click.echo(f"submission file -> {summary['submission']}")
    click.echo(f"{summary['frames_per_s']:.1f} frames/s ({summary['seconds']:.1f} s, {where})")


def predict_media_files(paths: list[str], model_path: str, out: str, batch_size: int, device: Optional[str],
                        detector: Optional[str], abaw_files: bool, protocol: Optional[str]) -> None:
    """`mtl predict --media`, in this process; prints the summary."""
    from mtl.serve.faces import predict_media

    if storage.is_uri(out):
        raise click.UsageError("--media writes a local --out folder")
    s = predict_media(model_path, paths, out, batch_size, device, detector, abaw_files, protocol=protocol)
    click.echo(f"{s['files']} files, {s['frames']} frames, {s['faces']} faces in {s['tracks']} tracks -> {s['csv']}; "
               f"{len(s['unreadable'])} unreadable, {len(s['truncated'])} truncated")


@click.command()
@path_option("--checkpoint", role="input", required=True, type=click.Path(dir_okay=False),
             help="A best.pt written by training.")
@click.option("--config", "config_source", default=None,
              help="Config file or preset [default: the checkpoint's own config]; KEY=VALUE arguments override it.")
@key_option("--shards", key="data.shards", type=click.Path(file_okay=False), help="Shard folder (index.json).")
@path_option("--split", role="input", default="val", show_default=True, type=click.Choice(["train", "val"]),
             help="Which split of the shards is scored.")
@path_option("--out", role="output", type=click.Path(dir_okay=False), help="Also write the scores as JSON here.")
@key_option("--device", key="runtime.device", type=click.Choice(["auto", "cpu", "cuda"]),
            help="Where the model runs (cuda: bf16 autocast, channels_last; on Ray, a task with one GPU).")
@click.argument("overrides", nargs=-1)
@ray_address_option
def evaluate(checkpoint: str, config_source: Optional[str], split: str, out: Optional[str], overrides: tuple,
             address: Optional[str], **aliases) -> None:
    """Score a checkpoint on a split: per-AU F1 and accuracy, EXPR confusion matrix, CCCs. OVERRIDES are dotted
    key=value pairs (data.shards, runtime.device, train.eval_batch_size)."""
    from mtl.eval.evaluate import evaluate_checkpoint, format_scores
    from mtl.jobs.ray_session import RaySession, resolve_device

    cfg = config_of(config_source, checkpoint, config_overrides(aliases, overrides))
    if not cfg.data.shards:
        raise click.UsageError("give the shards: --shards FOLDER or data.shards=FOLDER")
    session = RaySession(address) if address else None  # with --address: one Ray task on that cluster
    if session:
        session.start()  # before the device is decided: auto means the cluster's GPUs
    cfg = resolve_device(cfg)
    result = evaluate_checkpoint(checkpoint, cfg.data.shards, split, cfg.train.eval_batch_size, cfg.runtime.device,
                                 session=session)
    click.echo(format_scores(result))
    if out:
        storage.write_json(out, result)
        click.echo(f"wrote {out}")


COMMANDS = [predict, evaluate]
