"""The shims over Ray's private and unstable API, against the Ray this project pins: they fail here first when an
upgrade moves what they read."""

import queue

import pytest

from mtl.errors import DataError
from mtl.jobs.ray_compat import (
    bootstrap_address, failure_causes, node_ip_address, session_dir, startup_timed_out, tune_forwarder,
)


def test_a_training_failure_gives_each_workers_own_error_then_the_controllers():
    from ray.train import ControllerError, WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback, WorkerGroupStartupTimeoutError

    bad = DataError("shard-0.tar: sample 'a' is malformed")
    workers = WorkerGroupError("two ranks failed", {1: UserExceptionWithTraceback(bad, "traceback"),
                                                    0: ValueError("rank 0")})
    causes = failure_causes(workers)
    assert [type(c) for c in causes] == [ValueError, DataError] and causes[1] is bad
    assert not startup_timed_out(workers)

    timeout = ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    assert startup_timed_out(timeout)
    assert [type(c).__name__ for c in failure_causes(timeout)] == ["WorkerGroupStartupTimeoutError"]
    assert not startup_timed_out(ControllerError(RuntimeError("other")))


def test_the_tune_forwarder_is_a_train_callback_that_survives_pickling_and_forwards_each_report(tmp_path):
    import ray.cloudpickle
    from ray.train import Checkpoint, UserCallback

    reports: queue.SimpleQueue = queue.SimpleQueue()
    callback = tune_forwarder(reports)
    assert isinstance(callback, UserCallback) and type(callback) is type(tune_forwarder(reports))
    callback.after_report(None, [{"epoch": 0, "val_total": 0.5}, {"epoch": 0}], Checkpoint(str(tmp_path)))
    callback.after_report(None, [{"epoch": 1}], None)
    assert reports.get_nowait() == ({"epoch": 0, "val_total": 0.5}, str(tmp_path))
    assert reports.get_nowait() == ({"epoch": 1}, None)

    class Sink(list):  # what the Train controller gets: a copy, which must still reach the queue it was given
        put = list.append

    copied = ray.cloudpickle.loads(ray.cloudpickle.dumps(tune_forwarder(Sink())))
    copied.after_report(None, [{"epoch": 2}], None)
    assert copied.queue == [({"epoch": 2}, None)]


def test_the_session_folder_and_addresses_of_the_running_ray(ray_session):
    gcs = ray_session.get_runtime_context().gcs_address
    folder = session_dir()
    assert folder.is_dir() and folder.name.startswith("session_") and (folder / "logs").is_dir()
    assert bootstrap_address(gcs) == gcs
    assert gcs.rsplit(":", 1)[0] == node_ip_address()


def test_the_sigint_handler_a_fit_installs_is_removed_after_it_and_the_one_before_is_back():
    import signal

    from mtl.jobs.ray_compat import sigint_restored

    held = object()  # what Ray's handler closes over: the run's controller

    def ours(signum, frame):
        pass

    before = signal.signal(signal.SIGINT, ours)
    try:
        with sigint_restored():
            signal.signal(signal.SIGINT, lambda signum, frame, run=held: None)  # as Ray Train's fit() does
        assert signal.getsignal(signal.SIGINT) is ours
        with pytest.raises(RuntimeError), sigint_restored():
            signal.signal(signal.SIGINT, lambda signum, frame, run=held: None)
            raise RuntimeError("the run failed")
        assert signal.getsignal(signal.SIGINT) is ours
    finally:
        signal.signal(signal.SIGINT, before)
