"""Student configs derived from the run's (their parallel training runs, on Tune and in Ray tasks, in
tests/stages/test_pipeline.py)."""

from mtl.config import load_config, updated
from mtl.stages.students import student_config


def test_student_configs_differ_by_seed_folder_and_backbone():
    cfg = load_config("demo", ("students.count=3", "students.backbones=[test_resnet, test_efficientnet]",
                               "students.epochs=2", "train.epochs=5", "train.seed=10"))
    students = [student_config(cfg, i) for i in range(3)]
    assert [s.train.seed for s in students] == [11, 12, 13]
    assert [s.train.name for s in students] == ["students/student_0", "students/student_1", "students/student_2"]
    assert [s.model.backbone for s in students] == ["test_resnet", "test_efficientnet", "test_resnet"]
    assert all(s.train.role == "student" and s.train.epochs == 2 for s in students)


def test_students_run_with_their_own_worker_count_else_the_runs():
    cfg = load_config("demo", ("train.workers=2",))
    assert student_config(cfg, 0).train.workers == 2
    assert student_config(updated(cfg, {"students.workers": 0}), 1).train.workers == 0
