"""The ensemble stage's member predictions run where runtime.device says: the request is in the Ray task options."""

from mtl.stages.ensemble import member_task_options


def test_member_predictions_request_a_gpu_only_on_cuda():
    assert member_task_options("cpu") == {"num_cpus": 1, "num_gpus": 0, "max_calls": 0}
    assert member_task_options("cuda") == {"num_cpus": 1, "num_gpus": 1, "max_calls": 0}  # the GPU worker is reused
