"""Every place mtl works around a behaviour of the Ray it pins (`ray[default,train,tune]>=2.60,<2.61`): an upgrade
re-checks the list below, top to bottom. The shims themselves (private attributes, class names matched as text, the
Train -> Tune bridge) live in this module; the others say where they live and what to look for.

Shims here (private or unstable Ray API):
- `session_dir`: the local Ray's session folder, from `ray._private.worker._global_node` (no public API); the
  dead-driver records of `mtl.jobs.ray_session` name it.
- `bootstrap_address`, `node_ip_address`: `ray._private.services` (address resolution as `ray.init` does it; the
  GCS address of a local Ray chosen before it starts). Used by `mtl.jobs.ray_session`.
- `failure_causes`, `startup_timed_out`: what a `ray.train.TrainingFailedError` wraps. A worker's exception comes
  wrapped in `UserExceptionWithTraceback` (private `_base_exc`); a start-up timeout is
  `ray.train.v2._internal.exceptions.WorkerGroupStartupTimeoutError`, matched by its class name. For
  `mtl.train.driver.fit`.
- `tune_forwarder`: a Ray Train `UserCallback` that hands each report (rank 0's metrics and the checkpoint path) to
  the Tune trial that started the Train run, through a Ray queue that the trial drains and reports to Tune
  (`mtl.tune.trial.run_trial`: the Train run in a thread, the queue pumped in the trial's own). Ray's
  `TuneReportCallback` carries no checkpoint, which PBT needs.
- `route_worker_output`: the driver prints every worker's output line through one handler ("ray_print_logs") of
  `ray._private.worker.global_worker_stdstream_dispatcher` (no public hook): it is replaced by one that hands each
  batch of lines to `mtl.console.worker_output` with Ray's own printer (`print_to_stdstream`); the raylet's error
  messages (a worker killed for memory, too many workers started) are printed by `listen_error_messages` through
  the module's `print_to_stdstream`, replaced by the same route. Called by `mtl.jobs.ray_session.ensure_ray` once
  Ray is up.
- Ray Tune's "new output engine" prints its experiment table and result paths whatever the verbosity:
  `mtl.console.setup` sets RAY_AIR_NEW_OUTPUT=0 on a quiet console (the legacy reporter, silent at verbose=0).
- `sigint_restored`: Ray Train's `fit()` in the main thread installs a SIGINT handler whose closure holds the
  run's controller actor and never removes it, so the controller (torch imported, ~0.4 GiB) outlives the run until
  the next `fit()`; restoring the previous handler after `fit()` lets Ray end it. Used by `mtl.train.driver.fit`.
- `TOKEN_TRIAL`: the resources of a Tune trial that only drives a Train run (`{"memory": 1}`: Tune refuses an empty
  request). Used by `mtl.tune.search` and `mtl.stages.students.train_students`.

Workarounds that live where their concept does:
- Ray Train retries every exception a worker raises (up to FailureConfig.max_failures; its failure policy has no
  hook), so deterministic errors must not be raised there: the ranks agree on a data error or a full disk and all
  return it (`mtl.train.data_stop`, `mtl.train.loop.train_loop`), and `mtl.train.driver.fit` turns whatever Ray
  retried anyway into one line.
- Tune retries an errored trial (FailureConfig(max_failures=1)), so a trial reports a data error, a full disk or
  missing workers as `data_error` and ends normally (`mtl.tune.trial.run_trial`, `mtl.stages.students.
  student_trial`); the search and the students stage raise it afterwards.
- Checkpoint upload through Ray Train's `StorageContext` (`ray.train.get_context().get_storage()`, a DeveloperAPI
  "may change without notice between minor versions": `storage_filesystem`, `build_checkpoint_path_from_name`,
  `persist_current_checkpoint`) as `ray.train.report(checkpoint_upload_fn=...)`: `mtl.train.loop.upload_checkpoint`.
- Ray Train's record of the checkpoints it kept, `checkpoint_manager_snapshot.json` in its run folder (an internal
  file): `mtl.train.driver.SNAPSHOT` (stray checkpoint folders) and `tests/conftest.controller_registered_a_checkpoint`.
- Worker-group start-up is retried in periods of RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (default 60 s) through
  FailureConfig.controller_failure_limit: `mtl.config_schema.RuntimeConfig.worker_start_tries`,
  `mtl.train.driver.train`.
- Ray Train starts a PreemptionWatcher actor per run (Ray >= 2.5x), useless on one machine: a local Ray's
  processes inherit RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0 (`mtl.jobs.ray_session.LOCAL_RAY_ENV`).
- Ray Train's print patch shows every worker line twice: RAY_TRAIN_ENABLE_PRINT_PATCH=0 in `mtl.OFFLINE_DEFAULTS`.
- Ray's own clients in our processes find "their" cluster by RAY_ADDRESS, else by scanning the machine (which fails
  or picks another instance): `mtl.jobs.ray_session.ensure_ray` states the address in every job's runtime_env and
  keeps the dashboard on (Tune frees stopped Train runs through its state API); a local Ray's agents outlive a
  SIGKILLed driver: `mtl.jobs.ray_session.clean_dead_sessions`.
- A GPU task gets a fresh worker process each time by default (torch import + CUDA context per task):
  `max_calls=0` in `mtl.jobs.ray_session.task_options`.
- Tune's PBT draws its explore/exploit choices from Python's `random`: seeded in `mtl.tune.search.run_search`.
- A job's runtime_env (env_vars included) is stored in clear, masked by the 2.60 dashboard only for browsers:
  `mtl.jobs.submit` refuses secret-looking env vars; Ray >= 2.59 clusters check a token that clients must announce
  (RAY_AUTH_MODE=token): `mtl.jobs.submit.use_token_auth_if_available`.
- A cancelled task not read back has Ray print its traceback later: `mtl.data.prepare._stop` reads them; a task's
  error arrives as RayTaskError whose `cause` is ours: `mtl.data.prepare`, `mtl.cli.main`.
- Tests that use private Ray modules: tests/jobs/test_submit.py (`ray.autoscaler._private.util`,
  `ray._private.runtime_env`), tests/data/test_prepare.py (`ray._private.worker._unhandled_error_handler`),
  tests/jobs/test_ray_compat.py (the shims above, against Ray's own exception classes).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Iterator, Optional

TOKEN_TRIAL = {"memory": 1}  # a Tune trial that only drives its Ray Train run: Tune refuses an empty request


def session_dir() -> Path:
    """The session folder of the Ray instance this process is connected to (after `ray.init`)."""
    import ray._private.worker

    return Path(ray._private.worker._global_node.get_session_dir_path())


def bootstrap_address(address: Optional[str]) -> str:
    """`address` resolved as `ray.init` resolves it (host:port of the GCS; None: RAY_ADDRESS, else the one Ray
    instance a scan of the machine finds); raises when there is none."""
    from ray._private import services

    return services.canonicalize_bootstrap_address_or_die(address)


def node_ip_address() -> str:
    """This node's IP address as Ray chooses it for a local instance."""
    from ray._private import services

    return services.get_node_ip_address()


def failure_causes(err: BaseException) -> list[BaseException]:
    """The exceptions a `ray.train.TrainingFailedError` stands for: each worker's own (rank order), then the
    controller's."""
    failures = getattr(err, "worker_failures", {}) or {}
    causes = [getattr(e, "_base_exc", e) for _, e in sorted(failures.items())]
    controller = getattr(err, "controller_failure", None)
    return causes + ([controller] if controller is not None else [])


def startup_timed_out(err: BaseException) -> bool:
    """Whether a `ray.train.TrainingFailedError` is Ray Train giving up on starting the worker group (every
    start-up period ran out)."""
    return type(getattr(err, "controller_failure", None)).__name__ == "WorkerGroupStartupTimeoutError"


def tune_forwarder(queue):
    """A Ray Train callback (it runs in the Train controller) that puts `(rank 0's metrics, checkpoint path or
    None)` of every report on `queue` (a `ray.util.queue.Queue`), for the Tune trial to report."""
    return forwarder_class()(queue)


@cache
def forwarder_class() -> type:
    """The callback class of `tune_forwarder`, built on first use: importing ray.train takes seconds, and this
    module is imported wherever Ray starts."""
    from ray.train import UserCallback

    class Forward(UserCallback):
        def __init__(self, queue):
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint):
            self.queue.put((metrics[0], checkpoint.path if checkpoint else None))

    return Forward


ROUTE_NAME = "mtl_console"


def route_worker_output() -> bool:
    """Hand the worker output lines this driver receives (log_to_driver) to `mtl.console.worker_output` instead of
    Ray's printer; False where Ray forwards none (log_to_driver=False) or the dispatcher is not as expected."""
    import functools

    from ray._private import worker

    from mtl.console import worker_output
    from mtl.progress import receiving

    receiving()
    dispatcher = getattr(worker, "global_worker_stdstream_dispatcher", None)
    names = [name for name, _ in getattr(dispatcher, "handlers", ())]
    if ROUTE_NAME in names:
        return True
    if "ray_print_logs" not in names:
        return False
    ignore_prefix = worker._should_ignore_worker_log_prefix(worker.global_worker)
    printer = getattr(worker.print_to_stdstream, "ray_printer", worker.print_to_stdstream)
    ray_print = functools.partial(printer, ignore_prefix=ignore_prefix)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler(ROUTE_NAME, functools.partial(worker_output, ray_print=ray_print,
                                                         autoscaler_events=worker.filter_autoscaler_events))

    def error_message(data: dict, ignore_prefix: bool) -> None:  # what listen_error_messages prints
        worker_output(data, ray_print=functools.partial(printer, ignore_prefix=ignore_prefix))

    error_message.ray_printer = printer
    worker.print_to_stdstream = error_message
    return True


@contextmanager
def sigint_restored() -> Iterator[None]:
    """The block (a Ray Train `fit()`) with the SIGINT handler it installs removed after it: the one before it
    is put back (main thread only: elsewhere neither Ray nor Python sets handlers)."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGINT, before)
