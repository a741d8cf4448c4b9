"""Commands that run stages: `mtl demo`, `train`, `pipeline`, `tune`, `soft-labels`, `submit`."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from mtl import console, storage
from mtl.commands.options import address_option, config_option, config_overrides, key_option
from mtl.run_lock import run_lock
from mtl.jobs.submit import COMMANDS as SUBMITTABLE


@contextmanager
def in_run(run_dir, command: str) -> Iterator[None]:
    """The block of a command that runs in `run_dir`: its run lock held, its console log open (`mtl.console`)."""
    with run_lock(run_dir, command), console.run_log(run_dir):
        yield


@click.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--protocol", default="abaw2020", show_default=True, type=click.Choice(["abaw2020", "abaw3"]),
              help="Label schema: abaw2020 (the paper's: 8 AUs, 7 expressions, per-task files) or abaw3 (the "
                   "synthetic s-Aff-Wild2 of the ABAW3+ multi-task challenge: 12 AUs, 8 expressions, P_MTL).")
@click.argument("overrides", nargs=-1)
@address_option
def demo(out: str, seed: int, protocol: str, overrides: tuple, address) -> None:
    """Synthetic data through every stage available, on a local Ray (or --address); OVERRIDES (dotted key=value)
    adjust the demo config of the pipeline, e.g. runtime.device=cuda."""
    from mtl.demo import run_demo

    with in_run(out, "mtl demo"):
        run_demo(Path(out), seed=seed, address=address, overrides=overrides, protocol=protocol)



@click.command(context_settings={"ignore_unknown_options": False})
@config_option
@click.argument("overrides", nargs=-1)
@address_option
def train(config_source: str, overrides: tuple, address) -> None:
    """Train the role the config names (train.role) on Ray Train; OVERRIDES are dotted key=value pairs."""
    from mtl.config import load_config
    from mtl.jobs.ray_session import RaySession
    from mtl.train.driver import train as run_train

    cfg = load_config(config_source, overrides)
    with in_run(cfg.run.dir, "mtl train"):
        outcome = run_train(cfg, RaySession(address))
    metrics = outcome["metrics"]
    click.echo(f"best epoch {metrics.get('epoch')}: " + "  ".join(
        f"{t} {metrics[f'val_{t}']:.4f}" for t in ("au", "expr", "va", "total") if f"val_{t}" in metrics))
    click.echo(f"wrote {outcome['best']}")


@click.command()
@config_option
@click.argument("overrides", nargs=-1)
@address_option
def pipeline(config_source: str, overrides: tuple, address) -> None:
    """Teacher -> soft labels -> students -> ensemble -> report; re-run to resume."""
    from mtl.config import load_config
    from mtl.stages.pipeline import run_pipeline
    from mtl.eval.report import format_table

    cfg = load_config(config_source, overrides)
    with in_run(cfg.run.dir, "mtl pipeline"):
        report = run_pipeline(cfg, address)
    click.echo(format_table(report))
    click.echo(f"report: {storage.join(cfg.run.dir, 'report.md')}")


@click.command()
@config_option
@key_option("--space", key="tune.space", type=click.Path(dir_okay=False), help="Search space YAML (tune/NAME.yaml).")
@click.argument("overrides", nargs=-1)
@address_option
def tune(config_source: str, overrides: tuple, address, **aliases) -> None:
    """Ray Tune search over a space, every trial a Ray Train run; re-run the same command to resume."""
    from mtl.tune.results import format_results
    from mtl.jobs.ray_session import RaySession
    from mtl.tune.search import load_search, run_search

    cfg, space = load_search(config_source, None, config_overrides(aliases, overrides))
    with in_run(cfg.run.dir, "mtl tune"):
        click.echo(format_results(run_search(cfg, space, RaySession(address))))


@click.command("soft-labels")
@config_option
@click.argument("overrides", nargs=-1)
@address_option
def soft_labels(config_source: str, overrides: tuple, address) -> None:
    """The teacher's outputs on every training sample (distill.teacher -> distill.soft_labels), on Ray: the
    pipeline's soft-labels stage on its own."""
    from mtl.config import load_config
    from mtl.jobs.ray_session import RaySession
    from mtl.stages.soft_labels import SoftLabelsStage
    from mtl.runs import soft_labels_dir, teacher_path

    cfg = load_config(config_source, overrides)
    with in_run(cfg.run.dir, "mtl soft-labels"):
        manifest = SoftLabelsStage().compute(cfg, teacher_path(cfg), session=RaySession(address))
    click.echo(f"{sum(manifest['shards'].values())} samples in {len(manifest['shards'])} shards -> "
               f"{soft_labels_dir(cfg)}")



@click.command(context_settings={"ignore_unknown_options": False})
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
              help="KEY=VALUE (or KEY: take it from this shell) set in the job's environment (repeatable). Values "
                   "are shown as <redacted> in every output, but Ray stores them in clear in the job's runtime_env "
                   "(job API, GCS), so a secret-looking KEY (..SECRET, ..TOKEN, ..PASSWORD, ..KEY, ..CREDENTIALS) "
                   "is refused: give the nodes credentials (instance profile, service account, Kubernetes secret, "
                   "AWS_PROFILE with a credentials file on the nodes), or see --allow-secret-env.")
@click.option("--allow-secret-env", is_flag=True,
              help="Accept secret-looking env vars (--env, --runtime-env) although Ray stores their values in clear "
                   "in the job's runtime_env, readable through the job API by anyone who reaches the cluster.")
@click.option("--runtime-env", "runtime_env_file", type=click.Path(dir_okay=False, exists=True),
              help="A runtime_env YAML to start from (e.g. cluster/runtime_env.yaml). The working_dir upload "
                   "honours .gitignore and .rayignore and never includes secret files (.env, *.pem, *.key, "
                   "id_rsa*, .aws/, .ssh/, credentials*.json, .netrc, ...).")
@click.option("--submission-id", default=None, help="Job id (default: Ray picks one).")
@click.option("--wait", is_flag=True, help="Stream the logs until the job ends; exit 1 unless it succeeded.")
@click.option("--timeout", "timeout_s", default=None, type=click.FloatRange(0), help="With --wait: stop the job "
                                                                                     "after this many seconds.")
@click.option("--dry-run", is_flag=True, help="Print what would be submitted; submit nothing.")
@click.argument("overrides", nargs=-1)
def submit(address, command, config_source, run_dir, shards, working_dir, no_working_dir, pip, env_pairs,
           allow_secret_env, runtime_env_file, submission_id, wait, timeout_s, dry_run, overrides) -> None:
    """Run an mtl command (default: pipeline) as a Ray job on a running cluster, with a runtime environment."""
    import os

    import yaml

    from mtl.jobs.submit import JobFailed, build_submission, describe, parse_env, submit as run_submit

    base = yaml.safe_load(Path(runtime_env_file).read_text()) if runtime_env_file else None
    submission = build_submission(config_source, overrides, command, run_dir, shards,
                                  None if no_working_dir else working_dir, pip, parse_env(env_pairs), base,
                                  submission_id, allow_secret_env=allow_secret_env)
    if "working_dir" in submission.runtime_env and os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE") == "1":
        click.echo("warning: RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1: files the .gitignore names are uploaded too "
                   "(the secret files are still left out)", err=True)
    if dry_run:
        click.echo(describe(submission, address))
        return
    try:
        outcome = run_submit(submission, address, wait=wait, timeout_s=timeout_s)
    except (JobFailed, ConnectionError) as err:  # ConnectionError: no job API at that address
        click.echo(f"error: {submission.scrub(str(err))}", err=True)
        sys.exit(1)
    click.echo(f"job {outcome['submission_id']}: {outcome['status']}")


COMMANDS = [demo, train, pipeline, tune, soft_labels, submit]
