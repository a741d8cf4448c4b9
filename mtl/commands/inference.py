"""Inference commands: `mtl predict`, `mtl evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from mtl import storage


@click.command()
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


@click.command()
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


COMMANDS = [predict, evaluate]
