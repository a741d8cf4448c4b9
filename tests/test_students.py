"""Students: configs derived from the run's, trained in parallel by Ray Tune, each from the teacher's soft labels."""


from mtl.config import load_config
from mtl.soft_labels import compute_soft_labels
from mtl.students import student_config, train_students
from mtl.train import train

TINY = ("model.backbone=test_resnet", "data.image_size=16", "train.batch_size=16", "data.loader_workers=1",
        "data.shuffle_buffer=50", "train.eval_batch_size=64")


def test_student_configs_differ_by_seed_folder_and_backbone():
    cfg = load_config("demo", ("students.count=3", "students.backbones=[test_resnet, test_efficientnet]",
                               "students.epochs=2", "train.epochs=5", "train.seed=10"))
    students = [student_config(cfg, i) for i in range(3)]
    assert [s.train.seed for s in students] == [11, 12, 13]
    assert [s.train.name for s in students] == ["students/student_0", "students/student_1", "students/student_2"]
    assert [s.model.backbone for s in students] == ["test_resnet", "test_efficientnet", "test_resnet"]
    assert all(s.train.role == "student" and s.train.epochs == 2 for s in students)


def test_students_train_in_parallel_from_the_teachers_soft_labels(tmp_path, imbalanced_shards, ray_session):
    base = (f"run.dir={tmp_path}", f"data.shards={imbalanced_shards}", *TINY)
    teacher = train(load_config("demo", (*base, "train.workers=0", "train.epochs=1")))
    compute_soft_labels(teacher["best"], imbalanced_shards, tmp_path / "soft_labels", progress=False)
    students = load_config("demo", (*base, "train.workers=1", "students.count=2", "students.epochs=1"))
    outcomes = train_students(students)
    assert [o["name"] for o in outcomes] == ["student_0", "student_1"]
    assert all((tmp_path / "students" / o["name"] / "best.pt").is_file() for o in outcomes)
    assert outcomes[0]["history"][0]["train_loss"] != outcomes[1]["history"][0]["train_loss"]  # other seeds
    stamps = [(tmp_path / "students" / o["name"] / "best.pt").stat().st_mtime_ns for o in outcomes]
    again = train_students(students)
    assert [o["history"] for o in again] == [o["history"] for o in outcomes]
    assert stamps == [(tmp_path / "students" / o["name"] / "best.pt").stat().st_mtime_ns for o in outcomes]
