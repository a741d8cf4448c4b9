"""`mtl tune`: a Ray Tune search in which every trial is a Ray Train run of the config (`mtl.train.driver.train`).

A trial applies its sampled values (dotted keys of a `tune/NAME.yaml` space, see `mtl.stages.space`) to the config and
trains into RUN/tune/<name>/trial_<id>/, a folder that stays the same across restarts, so an interrupted trial's
Train run resumes. Each epoch's validation total (`val_total`, maximised) reaches Tune through `Forward`, a Train
callback, with `epochs` (epochs done) as the scheduler's clock. Scheduler: ASHA (default), PBT or none; searcher:
random/grid (Tune's variant generator seeded by train.seed) or Optuna (seeded; extra `mtl[optuna]`). A trial whose
loss goes NaN/inf ends itself (`diverged`) and the search goes on. Re-running the same command restores the search
(`Tuner.restore`): finished trials are kept, unfinished ones resume. Outputs in RUN/tune/<name>/: results.csv
(best first), best.yaml (the best trial's full config, for `mtl train` / `mtl pipeline`), summary.json. RUN may be
a bucket (s3://, gs://): Tune then keeps its experiment there too (RunConfig.storage_path as a URI), and restores
from there.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import posixpath
import threading
from typing import Optional

import yaml
from ray.train import UserCallback

from mtl import storage
from mtl.config import Config, absolute_paths, apply_override, config_dict, read_yaml, updated, validate
from mtl.errors import ConfigError, DataError
from mtl.stages.space import Space, check_space, load_space, python_value
from mtl.tables import text_table

log = logging.getLogger(__name__)

METRIC = "val_total"
CLOCK = "epochs"  # epochs done: the schedulers' time attribute (stays right when a Train run resumes mid-way)


def load_search(source: str, space_path: Optional[str], overrides=()) -> tuple[Config, Space]:
    """The config of `mtl tune`: file, then the space's fixed keys, then the command line's overrides."""
    data = read_yaml(source)
    for override in overrides:
        apply_override(data, override)
    space_path = space_path or validate(data).tune.space
    if not space_path:
        raise ConfigError("config key 'tune.space': required (or --space tune/NAME.yaml)")
    space = load_space(space_path)
    cfg = space.fix(validate(read_yaml(source)))
    data = config_dict(cfg)
    for override in (*overrides, f"tune.space={space_path}"):
        apply_override(data, override)
    cfg = absolute_paths(validate(data))  # a relative path means the same in every trial
    check_space(space, cfg)
    return cfg, space


def search_name(cfg: Config, space: Space) -> str:
    return cfg.tune.name or space.name


def search_dir(cfg: Config, name: str) -> str:
    """RUN/tune/<name>: an absolute local path or a URI (Ray's storage_path must be absolute)."""
    return storage.join(storage.absolute(cfg.run.dir), "tune", name)


def check_settings(cfg: Config, space: Space) -> None:
    """Refuse settings that cannot run, before Ray starts."""
    tune = cfg.tune
    if cfg.train.workers < 1:
        raise ConfigError("config key 'train.workers': every trial is a Ray Train run inside a Ray Tune trial, "
                          "so it needs at least 1 worker (local mode cannot run under Tune)")
    if not cfg.data.shards:
        raise ConfigError("config key 'data.shards': required (a shard folder written by `mtl prepare`)")
    grids = [p.key for p in space.params if p.kind == "grid"]
    if tune.searcher == "optuna":  # what the settings mean first, then whether the extra is installed
        if grids:
            raise ConfigError(f"{space.path}: key {grids[0]!r}: grid does not work with tune.searcher=optuna; "
                              "use choice")
        if tune.scheduler == "pbt":
            raise ConfigError("config key 'tune.scheduler': pbt needs tune.searcher=random")
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError("config key 'tune.searcher': optuna is not installed; "
                              "pip install 'mtl[optuna]' (or pip install optuna)") from None


class Forward(UserCallback):
    """Train callback (runs in the Train controller): hands rank 0's metrics and the checkpoint path of each
    report to the trial through a Ray queue, which reports them to Tune. Unlike Ray's TuneReportCallback it
    carries the checkpoint, which PBT needs."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put((metrics[0], checkpoint.path if checkpoint else None))


def trial_config(base: Config, values: dict, folder: str) -> Config:
    """The config of one trial: the search's config, the sampled values, its own training folder."""
    return updated(base, {**{key: python_value(value) for key, value in values.items()}, "train.name": folder})


def run_trial(values: dict, base: Config, name: str, pbt: bool) -> None:
    """One Tune trial: a Ray Train run of the sampled config, each epoch forwarded to Tune."""
    import ray.tune
    from ray.util.queue import Empty, Queue

    from mtl.train.driver import NOT_RETRIED, Diverged, train

    trial_id = ray.tune.get_context().get_trial_id()
    folder = f"tune/{name}/trial_{trial_id}"
    start = ray.tune.get_checkpoint() if pbt else None  # PBT: a state (this trial's or a cloned one's) to go on from
    if start is not None:  # a new Train run per state continued from, named by it (stable across restarts)
        folder += "_from_" + hashlib.sha1(start.path.encode()).hexdigest()[:8]
    cfg = trial_config(base, values, folder)
    queue: Queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = train(cfg, callbacks=[Forward(queue)],
                                      wandb_group=f"{storage.name(cfg.run.dir)}-{name}",
                                      init_checkpoint=start.path if start is not None else None)
        except BaseException as err:  # re-raised in the trial's thread below
            outcome["error"] = err

    thread = threading.Thread(target=fit, name=f"train-{trial_id}", daemon=True)
    thread.start()
    reported = 0
    while thread.is_alive() or not queue.empty():
        try:
            metrics, path = queue.get(timeout=1.0)
        except Empty:
            continue
        report_to_tune(metrics, path if pbt else None)
        reported += 1
    thread.join()
    error = outcome.get("error")
    if isinstance(error, NOT_RETRIED):  # bad bytes stay bad (a full disk...): reported, not raised, so Tune does
        # not retry the trial
        report_to_tune({"epoch": -1, "data_error": str(error), METRIC: math.nan}, None)
        return
    if isinstance(error, Diverged):
        if not reported:
            report_to_tune({"epoch": -1, "diverged": True, "divergence": str(error), METRIC: math.nan}, None)
        return
    if error is not None:
        raise error
    if not reported:  # the Train run had finished before (a restored search): hand Tune its last epoch
        report_to_tune(outcome["result"]["history"][-1], None)


def report_to_tune(metrics: dict, checkpoint_path: Optional[str]) -> None:
    import ray.tune

    result = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    result.update({CLOCK: int(metrics["epoch"]) + 1, "diverged": bool(metrics.get("diverged", False))})
    checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_path) if checkpoint_path else None
    ray.tune.report(result, checkpoint=checkpoint)


def make_scheduler(cfg: Config, space: Space):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    tune, epochs = cfg.tune, cfg.train.epochs
    if tune.scheduler == "asha":
        return ASHAScheduler(time_attr=CLOCK, max_t=epochs, grace_period=min(tune.grace_period, epochs),
                             reduction_factor=tune.reduction_factor)
    if tune.scheduler == "pbt":
        mutations = {p.key: list(p.args) if p.kind == "grid" else p.to_tune() for p in space.params}
        return PopulationBasedTraining(time_attr=CLOCK, perturbation_interval=tune.perturbation_interval,
                                       hyperparam_mutations=mutations)
    return FIFOScheduler()


def make_searcher(cfg: Config, concurrent: int):
    """Optuna (seeded) behind a ConcurrencyLimiter, or Tune's seeded variant generator (random and grid)."""
    if cfg.tune.searcher == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=cfg.train.seed), max_concurrent=concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=concurrent, random_state=cfg.train.seed)


def concurrency(cfg: Config) -> int:
    """Trials at once: tune.max_concurrent, else as many as the cluster's CPUs (and GPUs) hold."""
    import ray

    if cfg.tune.max_concurrent:
        return cfg.tune.max_concurrent
    from mtl.jobs.ray_session import trainings_that_fit

    return trainings_that_fit(cfg.train.workers, cfg.train.cpus_per_worker, cfg.worker_gpus(),
                              ray.cluster_resources())


def search_record(cfg: Config, space: Space) -> dict:
    return {"config": config_dict(cfg), "space": {"fixed": space.fixed,
                                                  "search": {p.key: {p.kind: list(p.args)} for p in space.params}}}


def check_same_search(record: dict, folder: str) -> None:
    """Refuse to resume a search stored in `folder` with another config or space."""
    from mtl.runs import changed_keys

    path = storage.join(folder, "search.json")
    if not storage.is_file(path):
        return
    stored = storage.read_json(path)
    changed = changed_keys(config_dict(validate(stored["config"])), record["config"], "search")
    if stored["space"] != record["space"]:
        changed.append("the search space")
    if changed:
        raise ConfigError(f"{folder} holds a search with another config ({', '.join(changed)} differ); "
                          f"set tune.name to start another search, or delete {folder}")


def run_search(cfg: Config, space: Space, address: Optional[str] = None) -> dict:
    """Run (or resume, or just read back) the search; returns summary.json's content:
    {"name", "dir", "rows": results best first, "best": the best row, "best_config": path of best.yaml}."""
    import random

    import ray.tune

    from mtl.data.index import load_index
    from mtl.jobs.ray_session import ensure_ray, resolve_device

    cfg = absolute_paths(cfg)
    check_space(space, cfg)
    check_settings(cfg, space)
    load_index(cfg.data.shards)
    name = search_name(cfg, space)
    folder = search_dir(cfg, name)
    record = search_record(cfg, space)
    check_same_search(record, folder)
    if storage.is_file(storage.join(folder, "summary.json")):
        log.info("%s: search already done", folder)
        return storage.read_json(storage.join(folder, "summary.json"))
    storage.makedirs(folder)
    storage.write_json(storage.join(folder, "search.json"), record)
    ensure_ray(address)
    cfg = resolve_device(cfg)
    pbt = cfg.tune.scheduler == "pbt"
    trainable = ray.tune.with_resources(  # the trial only drives its Train run: a token request
        ray.tune.with_parameters(run_trial, base=cfg, name=name, pbt=pbt), {"memory": 1})
    experiment = storage.join(folder, "ray")  # a URI stays one: Tune stores and restores through pyarrow
    random.seed(cfg.train.seed)  # PBT draws its explore/exploit choices from `random`
    if ray.tune.Tuner.can_restore(experiment):
        log.info("resuming the search stored in %s", experiment)
        tuner = ray.tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable, param_space=space.to_tune(),
            tune_config=ray.tune.TuneConfig(metric=METRIC, mode="max", num_samples=cfg.tune.num_samples,
                                            scheduler=make_scheduler(cfg, space),
                                            search_alg=make_searcher(cfg, concurrency(cfg)),
                                            trial_dirname_creator=lambda trial: f"tune_{trial.trial_id}"),
            run_config=ray.tune.RunConfig(
                name=storage.name(experiment), storage_path=folder,
                failure_config=ray.tune.FailureConfig(max_failures=1),
                checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=4) if pbt else None))
    grid = tuner.fit()
    data_errors = [r.metrics["data_error"] for r in grid if r.metrics and r.metrics.get("data_error")]
    if data_errors:  # no summary: the search runs again once the data is fixed
        raise DataError(data_errors[0])
    rows = result_rows(grid, space, cfg.train.epochs)
    write_results(storage.join(folder, "results.csv"), rows, space)
    summary = {"name": name, "dir": str(folder), "rows": rows, "best": None, "best_config": None}
    finite = [r for r in rows if r["status"] in ("finished", "stopped") and math.isfinite(r[METRIC])]
    if finite:
        summary["best"] = finite[0]
        summary["best_config"] = write_best_config(cfg, space, finite[0], storage.join(folder, "best.yaml"))
    if all(r["status"] != "error" for r in rows):  # a search with errored trials is resumed by the next run
        storage.write_json(storage.join(folder, "summary.json"), summary)
    return summary


def result_rows(grid, space: Space, epochs: int) -> list[dict]:
    """One row per trial: status (finished | stopped early | diverged | error), epochs, its best epoch's scores
    and its values; best first, diverged and errored trials last."""
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        records = frame.to_dict("records") if frame is not None and len(frame) else []
        if result.metrics and not records:
            records = [result.metrics]
        scored = [r for r in records if isinstance(r.get(METRIC), (int, float)) and math.isfinite(r[METRIC])]
        top = max(scored, key=lambda r: r[METRIC]) if scored else {}
        done = max([int(r.get(CLOCK, 0)) for r in records], default=0)
        diverged = next((r for r in records if r.get("diverged") is True), None)
        target = int(result.config.get("train.epochs", epochs))  # train.epochs may be searched too
        status = ("error" if result.error else "diverged" if diverged is not None
                  else "finished" if done >= target else "stopped")
        trial_id = storage.name(result.path).removeprefix("tune_")
        rows.append({"trial": trial_id, "status": status, CLOCK: done,
                     "best_epoch": top.get("epoch"), METRIC: top.get(METRIC, math.nan),
                     **{f"val_{t}": top.get(f"val_{t}", math.nan) for t in ("au", "expr", "va")},
                     **{p.key: python_value(result.config.get(p.key)) for p in space.params},
                     "note": str(diverged.get("divergence", "")) if diverged else str(result.error or "")})
    order = {"finished": 0, "stopped": 0, "diverged": 1, "error": 2}
    return sorted(rows, key=lambda r: (order[r["status"]], -r[METRIC] if math.isfinite(r[METRIC]) else math.inf))


def write_results(path: str, rows: list[dict], space: Space) -> None:
    columns = ["trial", "status", CLOCK, "best_epoch", METRIC, "val_au", "val_expr", "val_va",
               *(p.key for p in space.params), "note"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(path, text.getvalue())


def best_values(row: dict, space: Space) -> dict:
    return {p.key: row[p.key] for p in space.params}


def write_best_config(cfg: Config, space: Space, row: dict, path: str) -> str:
    """The best trial's full config as YAML: trains where the search's config would (train.name as there), and
    the search is not run again by `mtl pipeline` (tune.before_students off)."""
    data = config_dict(updated(space.apply(cfg, best_values(row, space)), {"tune.before_students": False}))
    header = (f"# best trial {row['trial']} of search {storage.name(posixpath.dirname(path))} ({space.path}): "
              f"val_total {row[METRIC]:.4f} at epoch {row['best_epoch']}\n")
    return storage.write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def format_results(summary: dict) -> str:
    """The results table, best first, then where the outputs are."""
    rows = summary["rows"]
    if not rows:
        return "no trial ran"
    keys = [k for k in rows[0] if k not in ("note",)]
    lines = [text_table(keys, ([format_cell(r[k]) for k in keys] for r in rows), left=0)]
    lines += [f"  {r['trial']}: {r['note']}" for r in rows if r["note"]]
    best = summary["best"]
    lines.append(f"best: trial {best['trial']} (val_total {best[METRIC]:.4f}) -> {summary['best_config']}"
                 if best else "best: none (no trial finished with a finite val_total)")
    lines.append(f"results: {storage.join(summary['dir'], 'results.csv')}")
    return "\n".join(lines)


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    return "" if value is None else str(value)


def tuned_students(cfg: Config, address: Optional[str] = None) -> Config:
    """The pipeline hook (tune.before_students): search tune.space over students (after the soft labels exist;
    students.epochs each) and return `cfg` with the best trial's distill.* values (and train.lr if searched),
    which all students then use. A finished search is read back, not rerun."""
    if not cfg.tune.space:
        raise ConfigError("config key 'tune.space': required with tune.before_students (e.g. tune/distill.yaml)")
    space = load_space(cfg.tune.space)
    search_cfg = space.fix(updated(cfg, {"train.role": "student",
                                         "train.epochs": cfg.students.epochs or cfg.train.epochs}))
    if search_cfg.train.role != "student":
        raise ConfigError(f"{space.path}: key 'train.role': the search before the students trains students")
    summary = run_search(search_cfg, space, address)
    if summary["best"] is None:
        raise RuntimeError(f"search {summary['dir']}: no trial finished with a finite val_total")
    chosen = {k: v for k, v in best_values(summary["best"], space).items()
              if k.startswith("distill.") or k == "train.lr"}
    log.info("students use the best values of search %s: %s", summary["name"], chosen)
    return space.apply(cfg, chosen)
