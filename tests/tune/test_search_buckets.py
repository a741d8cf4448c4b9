"""Ray Tune with run.dir in a bucket (a loopback moto S3 server): Tune's experiment, the trial's Train run and the
search's outputs all land in the bucket, and a re-run restores the search from there; the pipeline hook reads a
finished search back from the bucket; no local folder named after the URI (`./s3:/...`) appears."""

import csv
import io
import os
import subprocess
import sys

import pytest

from tests.conftest import bucket_named_folders, job_env, moto_s3, tiny
from mtl import storage
from mtl.config import load_config
from mtl.tune.search import load_search, run_search, search_record
from mtl.tune.space import load_space
from mtl.tune.stage import tuned_students

BUCKET = "mtl-tune"
TINY = tiny("data.loader_workers=0", "train.workers=1")


@pytest.fixture(scope="module")
def aws(ray_session):
    with moto_s3(BUCKET) as env:
        yield env


def modified(location: str) -> int:
    fs, path = storage.filesystem(location)
    return fs.get_file_info(path).mtime_ns


def test_a_search_with_run_dir_in_a_bucket_keeps_tune_there_and_a_rerun_restores_it(
        tmp_path, imbalanced_shards, aws, ray_session, capsys):
    """One trial of one epoch through `mtl tune` (a CLI joining the session's Ray; the bucket's variables in its
    job runtime_env, as `mtl submit --env` gives a cluster job); then summary.json is removed and the same search
    (in this process: restoring a finished search starts no trial) is restored from the bucket (Tuner.restore)
    without training again."""
    import ray
    import ray.tune

    run = f"s3://{BUCKET}/runs/p1"
    (tmp_path / "one.yaml").write_text("search:\n  train.lr: {grid: [1.0e-9]}\n")
    (tmp_path / "cwd").mkdir()
    command = [sys.executable, "-m", "mtl.cli", "tune", "--space", str(tmp_path / "one.yaml"),
               "--address", ray.get_runtime_context().gcs_address, f"run.dir={run}",
               f"data.shards={imbalanced_shards}", *TINY, "train.epochs=1", "tune.num_samples=1",
               "tune.scheduler=none"]
    env = job_env({**aws, "MTL_LOCAL_DIR": str(tmp_path / "scratch")})

    done = subprocess.run(command, cwd=tmp_path / "cwd", env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    folder = f"{run}/tune/one"
    (row,) = list(csv.DictReader(io.StringIO(storage.read_text(f"{folder}/results.csv"))))
    assert (row["status"], row["epochs"]) == ("finished", "1") and f"results: {folder}/results.csv" in done.stdout
    best_pt = f"{folder}/trial_{row['trial']}/best.pt"
    assert storage.is_file(best_pt) and storage.is_file(f"{folder}/best.yaml")
    assert storage.read_json(f"{folder}/summary.json")["best"]["trial"] == row["trial"]
    assert ray.tune.Tuner.can_restore(f"{folder}/ray")  # Tune's experiment state is in the bucket
    assert storage.list_files(f"{folder}/trial_{row['trial']}/ray/trial_{row['trial']}", "checkpoint_manager*")

    stamp = modified(best_pt)
    storage.remove(f"{folder}/summary.json")
    summary = run_search(*load_search("demo", str(tmp_path / "one.yaml"), command[command.index("--address") + 2:]))
    assert f"[search] resuming the search stored in {folder}/ray" in capsys.readouterr().out  # a console line
    assert modified(best_pt) == stamp  # the finished trial was not trained again
    assert summary["best"]["trial"] == row["trial"] and storage.is_file(f"{folder}/summary.json")
    assert bucket_named_folders(tmp_path) == [] and not [n for n in os.listdir() if n.startswith("s3:")]


def test_the_pipeline_hook_reads_a_finished_search_back_from_a_bucket(imbalanced_shards, aws):
    run = f"s3://{BUCKET}/runs/hook"
    overrides = (f"run.dir={run}", f"data.shards={imbalanced_shards}", *TINY, "tune.before_students=true",
                 "tune.space=tune/distill.yaml", "students.epochs=2")
    space = load_space("tune/distill.yaml")
    search_cfg = space.fix(load_config("demo", (*overrides, "train.epochs=2")))
    folder = f"{run}/tune/distill"
    storage.write_json(f"{folder}/search.json", search_record(search_cfg, space))
    best = {"trial": "t1", "status": "finished", "val_total": 1.0, "distill.temperature": 3.0,
            "distill.alpha": 0.25, "train.lr": 5e-4}
    storage.write_json(f"{folder}/summary.json", {"name": "distill", "dir": folder, "rows": [best],
                                                 "best": best, "best_config": None})
    students = tuned_students(load_config("demo", overrides))
    assert (students.distill.temperature, students.distill.alpha, students.train.lr) == (3.0, 0.25, 5e-4)
    with pytest.raises(Exception, match="another config"):  # the search stored in the bucket is compared too
        tuned_students(load_config("demo", (*overrides[:-1], "students.epochs=3")))
