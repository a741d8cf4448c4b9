"""Model-file commands: `mtl export`, `mtl ensemble`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from mtl.commands.options import address_option

FORMAT_CHOICE = click.Choice(["torch-export", "onnx"])


@click.command()
@click.option("--model", "model_path", required=True,
              help="A best.pt (one model) or an exported .pt2 (a model or an ensemble, e.g. "
                   "RUN/ensemble/ensemble.pt2); frame models only.")
@click.option("--format", "fmt", required=True, type=FORMAT_CHOICE,
              help="torch-export: a torch.export program (.pt2); onnx: an ONNX model for onnxruntime (.onnx).")
@click.option("--out", required=True, help="File to write (a local path or a storage URI).")
def export(model_path: str, fmt: str, out: str) -> None:
    """Export a model or an ensemble with its thresholds, input size and label protocol (AU and expression names)
    as metadata."""
    from mtl.serve.export import export_file

    summary = export_file(model_path, out, fmt)
    click.echo(f"wrote {out}: {fmt}, {summary['kind']} of {summary['members']} member(s), "
               f"{summary['bytes'] / 1e6:.1f} MB, max |difference| to the PyTorch model {summary['max_abs_diff']:.2g}, "
               f"{summary['seconds']:.1f} s")


@click.command()
@click.option("--members", multiple=True, help="A member's best.pt; further files may follow it (--members a/best.pt "
                                                "b/best.pt) or the option be repeated.")
@click.argument("more_members", nargs=-1, metavar="[BEST.PT]...")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="A run folder: its students (RUN/students/*/best.pt) are the members, RUN/teacher/best.pt is "
                   "scored beside them.")
@click.option("--teacher", help="A teacher best.pt scored beside the ensemble (default with --run: the run's).")
@click.option("--shards", help="Shard folder whose validation split scores them [default: the first member's "
                               "data.shards].")
@click.option("--select/--no-select", default=None,
              help="Greedy member selection on the tuning half [default: the first member's students.select].")
@click.option("--threshold-rule", type=click.Choice(["f1", "break_even"]),
              help="Per-AU threshold rule [default: the first member's ensemble.threshold_rule].")
@click.option("--split-seed", type=int, help="Seed of the validation halves [default: the first member's "
                                             "eval.split_seed, the cut its training selected on].")
@click.option("--format", "fmt", default="torch-export", show_default=True, type=FORMAT_CHOICE)
@click.option("--out", required=True, help="Folder to write ensemble.pt2 (or .onnx; ensemble_temporal.pt for "
                                           "temporal members) and ensemble.json to.")
@click.option("--use-gpu", is_flag=True, help="Member predictions on GPUs (one per Ray task).")
@address_option
def ensemble(members: tuple, more_members: tuple, run_dir: Optional[str], teacher: Optional[str], shards: Optional[str],
             select: Optional[bool], threshold_rule: Optional[str], split_seed: Optional[int], fmt: str, out: str,
             use_gpu: bool, address: Optional[str]) -> None:
    """Rebuild the ensemble from chosen member checkpoints: scores, thresholds, members, exported model."""
    from mtl.checkpoint import read_model_file
    from mtl.config import validate
    from mtl.eval.report import format_table
    from mtl.jobs.ray_session import ensure_ray
    from mtl.stages.ensemble import build_ensemble

    students, teacher = member_files((*members, *more_members), run_dir, teacher)
    cfg = validate(read_model_file(students[0])["config"])
    for path in [*students[1:], *([teacher] if teacher else [])]:
        read_model_file(path)  # each a model file, before Ray tasks read them (a DataError in one line)
    ensure_ray(address)
    result = build_ensemble(
        students, shards or cfg.data.shards, out, teacher,
        select=cfg.students.select if select is None else select,
        rule=threshold_rule or cfg.ensemble.threshold_rule,
        seed=cfg.eval.split_seed if split_seed is None else split_seed, use_gpu=use_gpu, fmt=fmt,
        expr_f1=cfg.eval.expr_f1, bootstrap=cfg.ensemble.bootstrap)
    names = [Path(path).parent.name or str(i) for i, path in enumerate(students)]
    click.echo(format_table({"teacher": result.teacher or None, "ensemble": result.ensemble,
                             "students": [{**s, "name": n} for s, n in zip(result.students, names)]}))
    click.echo(f"members {[names[i] for i in result.ensemble['members']]}; thresholds "
               f"{[round(t, 3) for t in result.ensemble['thresholds']]}")
    click.echo(f"wrote {result.exported} and "
               f"{out.rstrip('/')}/ensemble.json")


def member_files(members: tuple, run_dir: Optional[str], teacher: Optional[str]) -> tuple[list[str], Optional[str]]:
    """(student files, teacher file or None) from --members and/or --run; each must exist."""
    from mtl import storage
    from mtl.serve.predict import natural_key

    students = list(members)
    if run_dir:
        found = sorted(Path(run_dir).glob("students/*/best.pt"), key=lambda p: natural_key(p.parent.name))
        if not found and not students:
            raise FileNotFoundError(f"{run_dir}: no students/*/best.pt in it")
        students += [str(p) for p in found]
        default_teacher = Path(run_dir) / "teacher" / "best.pt"
        teacher = teacher or (str(default_teacher) if default_teacher.is_file() else None)
    if not students:
        raise click.UsageError("give the members: --members best.pt ... or --run RUN")
    for path in [*students, *([teacher] if teacher else [])]:
        if not storage.is_file(path):
            raise FileNotFoundError(f"{path}: no such model file")
    return students, teacher


COMMANDS = [export, ensemble]
