"""The Ray Tune run of `mtl tune`: every trial a Ray Train run of the config (`mtl.tune.trial`).

Scheduler: ASHA (default), PBT or none; searcher: random/grid (Tune's variant generator seeded by train.seed) or
Optuna (seeded; extra `mtl[optuna]`). A diverged trial ends itself and the search goes on. Re-running the same
command restores the search (`Tuner.restore`): finished trials are kept, unfinished ones resume. Outputs in
RUN/tune/<name>/ (`mtl.tune.results`): results.csv (best first), best.yaml (the best trial's full config),
summary.json. RUN may be a bucket (s3://, gs://): Tune then keeps its experiment there too (RunConfig.storage_path
as a URI), and restores from there.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

from mtl import console, progress, storage
from mtl.config import Config, absolute_paths, apply_override, config_dict, read_yaml, validate
from mtl.errors import ConfigError, DataError
from mtl.extras import require
from mtl.jobs.ray_compat import TOKEN_TRIAL
from mtl.jobs.ray_session import RaySession
from mtl.tune.results import result_rows, write_best_config, write_results
from mtl.tune.space import Space, check_space, load_space
from mtl.tune.trial import CLOCK, METRIC, run_trial

log = logging.getLogger(__name__)


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
        require("optuna", "config key 'tune.searcher': tune.searcher=optuna")


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


def run_search(cfg: Config, space: Space, session: Optional[RaySession] = None) -> dict:
    """Run (or resume, or just read back) the search on the entry point's Ray `session` (`use_ray`, after the
    checks); returns summary.json's content:
    {"name", "dir", "rows": results best first, "best": the best row, "best_config": path of best.yaml}."""
    import random

    import ray.tune

    from mtl.data.index import load_index
    from mtl.jobs.ray_session import on_ray

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
    cfg = on_ray(cfg, session, "mtl.tune.search.run_search")
    pbt = cfg.tune.scheduler == "pbt"
    trainable = ray.tune.with_resources(  # the trial only drives its Train run: a token request
        ray.tune.with_parameters(run_trial, base=cfg, name=name, pbt=pbt), dict(TOKEN_TRIAL))
    experiment = storage.join(folder, "ray")  # a URI stays one: Tune stores and restores through pyarrow
    random.seed(cfg.train.seed)  # PBT draws its explore/exploit choices from `random`
    if ray.tune.Tuner.can_restore(experiment):
        console.show(f"[search] resuming the search stored in {experiment}")
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
                failure_config=ray.tune.FailureConfig(max_failures=1), verbose=0 if console.routed() else None,
                checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=4) if pbt else None))
    with progress.stage(f"search {name}", unit="epoch"):  # trials add their epochs as they start
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
