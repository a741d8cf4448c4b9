"""How many trainings fit the cluster at once (students, search trials): CPUs, and GPUs with train.use_gpu."""

from mtl.jobs.ray_session import trainings_that_fit


def test_cpus_bound_trainings_and_gpus_too_when_they_are_used():
    assert trainings_that_fit(1, 1, False, {"CPU": 4}) == 4
    assert trainings_that_fit(2, 2, False, {"CPU": 16, "GPU": 1}) == 4
    assert trainings_that_fit(2, 2, True, {"CPU": 16, "GPU": 4}) == 2  # one GPU per rank
    assert trainings_that_fit(1, 1, True, {"CPU": 4}) == 1  # never 0: Tune then waits for a node with a GPU
    assert trainings_that_fit(0, 1, False, {"CPU": 3}) == 3
