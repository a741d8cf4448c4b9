"""Student configs derived from the run's (their parallel training runs in tests/test_pipeline.py)."""


import pytest

from mtl.config import load_config
from mtl.errors import ConfigError
from mtl.stages.students import student_config, train_students


def test_student_configs_differ_by_seed_folder_and_backbone():
    cfg = load_config("demo", ("students.count=3", "students.backbones=[test_resnet, test_efficientnet]",
                               "students.epochs=2", "train.epochs=5", "train.seed=10"))
    students = [student_config(cfg, i) for i in range(3)]
    assert [s.train.seed for s in students] == [11, 12, 13]
    assert [s.train.name for s in students] == ["students/student_0", "students/student_1", "students/student_2"]
    assert [s.model.backbone for s in students] == ["test_resnet", "test_efficientnet", "test_resnet"]
    assert all(s.train.role == "student" and s.train.epochs == 2 for s in students)


def test_students_refuse_local_mode():
    with pytest.raises(ConfigError, match="train.workers"):
        train_students(load_config("demo", ("train.workers=0",)))
