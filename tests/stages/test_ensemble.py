"""The ensemble stage's member predictions run where train.use_gpu says: the request is in the Ray task options."""

from mtl.stages.ensemble import member_task_options


def test_member_predictions_request_a_gpu_only_with_use_gpu():
    assert member_task_options(False) == {"num_cpus": 1, "num_gpus": 0, "max_calls": 0}
    assert member_task_options(True) == {"num_cpus": 1, "num_gpus": 1, "max_calls": 0}  # the GPU worker is reused
