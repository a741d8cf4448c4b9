"""One trial of `mtl tune`: the search's config with the trial's sampled values, trained as a Ray Train run
(`mtl.train.driver.train`) into RUN/tune/<name>/trial_<id>/, a folder that stays the same across restarts, so an
interrupted trial's Train run resumes.

Each epoch's validation total (`METRIC`, maximised) reaches Tune through `mtl.jobs.ray_compat.tune_forwarder`, a
Train callback that puts every report on a Ray queue; the trial runs the Train run in a thread and reports what
the queue brings, with `CLOCK` (epochs done) as the scheduler's time. A trial whose loss goes NaN/inf reports
`diverged` and ends; a data error, a full disk or missing workers is reported as `data_error` and the trial ends
normally, so Tune does not retry it.
"""

from __future__ import annotations

import hashlib
import math
import threading
from typing import Optional

from mtl import storage
from mtl.config import Config, updated
from mtl.jobs.ray_compat import tune_forwarder
from mtl.tune.space import python_value

METRIC = "val_total"
CLOCK = "epochs"  # epochs done: the schedulers' time attribute (stays right when a Train run resumes mid-way)


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
            outcome["result"] = train(cfg, callbacks=[tune_forwarder(queue)],
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
