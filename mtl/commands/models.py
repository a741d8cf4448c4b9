"""Model-file commands: `mtl export`, `mtl ensemble`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from mtl.commands.options import address_option, config_of, config_overrides, key_option, path_option

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


def split_arguments(arguments: tuple) -> tuple[list[str], list[str]]:
    """(member files, dotted key=value overrides) of the positional arguments: an override is KEY=VALUE with KEY a
    dotted name (run.dir=..., students.select=true), anything else a file."""
    import re

    is_override = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+=").match
    return ([a for a in arguments if not is_override(a)], [a for a in arguments if is_override(a)])


@click.command()
@path_option("--members", role="input", multiple=True,
             help="A member's best.pt; further files may follow it (--members a/best.pt b/best.pt) or the option be "
                  "repeated.")
@click.argument("arguments", nargs=-1, metavar="[BEST.PT]... [KEY=VALUE]...")
@path_option("--run", "run_dir", role="input", type=click.Path(exists=True, file_okay=False),
             help="A run folder: its students (RUN/students/*/best.pt) are the members, RUN/teacher/best.pt is "
                  "scored beside them.")
@path_option("--teacher", role="input", help="A teacher best.pt scored beside the ensemble (default with --run: the "
                                             "run's).")
@click.option("--config", "config_source", default=None,
              help="Config file or preset whose keys build the ensemble [default: the first member's config, the one "
                   "it was trained with]; KEY=VALUE arguments override it.")
@key_option("--shards", key="data.shards", help="Shard folder whose validation split scores them.")
@key_option("--select/--no-select", key="students.select", default=None,
            help="Greedy member selection on the tuning half.")
@key_option("--threshold-rule", key="ensemble.threshold_rule", type=click.Choice(["f1", "break_even"]),
            help="Per-AU threshold rule.")
@key_option("--split-seed", key="eval.split_seed", type=int, help="Seed of the validation halves (the member's "
                                                                   "config: the cut its training selected on).")
@key_option("--format", "fmt", key="ensemble.format", type=FORMAT_CHOICE, help="File of the exported ensemble.")
@path_option("--out", role="output", required=True,
             help="Folder to write ensemble.pt2 (or .onnx; ensemble_temporal.pt for temporal members) and "
                  "ensemble.json to.")
@key_option("--device", key="runtime.device", type=click.Choice(["auto", "cpu", "cuda"]),
            help="Where member predictions run (cuda: a GPU per Ray task).")
@key_option("--use-gpu", key="runtime.device", value="cuda", is_flag=True, help="Former spelling of --device cuda.")
@address_option
def ensemble(members: tuple, arguments: tuple, run_dir: Optional[str], teacher: Optional[str],
             config_source: Optional[str], out: str, address: Optional[str], **aliases) -> None:
    """Rebuild the ensemble from chosen member checkpoints: scores, thresholds, members, exported model (the
    pipeline's ensemble stage on its own)."""
    from mtl.checkpoint import read_model_file
    from mtl.eval.report import format_table
    from mtl.jobs.ray_session import RaySession
    from mtl.stages.ensemble import EnsembleStage

    more_members, overrides = split_arguments(arguments)
    students, teacher = member_files((*members, *more_members), run_dir, teacher)
    cfg = config_of(config_source, students[0], config_overrides(aliases, tuple(overrides)))
    for path in [*students[1:], *([teacher] if teacher else [])]:
        read_model_file(path)  # each a model file, before Ray tasks read them (a DataError in one line)
    result = EnsembleStage().build(cfg, students, teacher, out, session=RaySession(address))
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
