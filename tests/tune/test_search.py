"""Ray Tune searches of Ray Train runs on tiny data: concurrency, ASHA, divergence, the exported best config, and
a search killed mid-way that resumes without redoing finished trials; first the settings refused before Ray starts
(no Ray instance needed)."""

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import controller_registered_a_checkpoint, tiny
from tests.tune.test_space import space_file
from mtl.config import load_config
from mtl.errors import ConfigError
from mtl.train.driver import train
from mtl.tune.search import check_settings, load_search, make_searcher, run_search
from mtl.tune.space import load_space

TINY = tiny("data.loader_workers=1", "train.workers=1")

# First key varies fastest: trials (1, 1e-9), (1e39, 1e-9), (1, 3e-3), (1e39, 3e-3). lambda_au = 1e39 overflows the
# float32 loss to inf at the first step. At epoch 1 on this data the lr=3e-3 run scores below the (untrained)
# lr=1e-9 one (CPU runs repeat exactly), and it starts only after a diverged trial freed its slot, so it always
# reaches ASHA's first rung after the lr=1e-9 trial and is stopped there.
GRID = """fixed: {train.role: teacher}
search:
  loss.lambda_au: {grid: [1, 1.0e+39]}
  train.lr: {grid: [1.0e-9, 3.0e-3]}
"""


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_settings_that_cannot_run_are_refused_before_ray_starts(tmp_path, monkeypatch):
    grid = load_space(space_file(tmp_path, "search:\n  train.lr: {grid: [0.1, 0.01]}\n"))
    choice = load_space(space_file(tmp_path, "search:\n  train.lr: {choice: [0.1, 0.01]}\n"))
    cfg = load_config("demo", ("data.shards=x", "tune.searcher=optuna"))
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match="grid does not work with tune.searcher=optuna"):
        check_settings(cfg, grid)  # a meaningless setting is named whether or not optuna is installed
    with pytest.raises(ConfigError, match="pbt needs tune.searcher=random"):
        check_settings(cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"scheduler": "pbt"})}), choice)
    with pytest.raises(ConfigError, match=r"pip install 'mtl\[optuna\]'"):
        check_settings(cfg, choice)
    with pytest.raises(ConfigError, match="train.workers"):
        check_settings(load_config("demo", ("data.shards=x", "train.workers=0")), grid)


def test_the_optuna_searcher_is_built_seeded_when_the_extra_is_installed(tmp_path):
    pytest.importorskip("optuna", reason="the optional extra mtl[optuna] is not installed")
    from ray.tune.search import ConcurrencyLimiter

    choice = load_space(space_file(tmp_path, "search:\n  train.lr: {choice: [0.1, 0.01]}\n"))
    cfg = load_config("demo", ("data.shards=x", "tune.searcher=optuna", "train.seed=7"))
    check_settings(cfg, choice)
    searcher = make_searcher(cfg, concurrent=2)
    assert isinstance(searcher, ConcurrencyLimiter) and searcher.max_concurrent == 2
    assert type(searcher.searcher).__name__ == "OptunaSearch" and searcher.searcher._seed == 7


def test_four_trials_two_at_once_asha_stops_the_worse_a_diverged_one_is_reported_and_the_best_config_trains(
        tmp_path, imbalanced_shards, ray_session, other_ray_instance):
    """With a second Ray instance on the machine, recorded as its current cluster (issue #20.2): Ray's own clients
    without an address in our tasks (the state API that Ray Train's placement-group cleaner polls) used to resolve
    to it, and a search could wait for good on worker-group start-up."""
    import ray

    @ray.remote(num_cpus=0)
    def state_api_cluster() -> str:
        from mtl.jobs.ray_compat import bootstrap_address

        return bootstrap_address(None)  # what Ray's clients given no address resolve to

    assert other_ray_instance != ray.get_runtime_context().gcs_address
    assert ray.get(state_api_cluster.remote()) == ray.get_runtime_context().gcs_address
    (tmp_path / "grid.yaml").write_text(GRID)
    cfg, space = load_search("demo", str(tmp_path / "grid.yaml"), (
        f"run.dir={tmp_path / 'run'}", f"data.shards={imbalanced_shards}", *TINY, "train.epochs=2",
        "tune.num_samples=1", "tune.max_concurrent=2", "tune.grace_period=1", "tune.reduction_factor=2"))
    summary = run_search(cfg, space)
    rows = {(r["loss.lambda_au"], r["train.lr"]): r for r in summary["rows"]}
    assert len(rows) == 4
    assert rows[(1, 1e-9)]["status"] == "finished" and rows[(1, 1e-9)]["epochs"] == 2
    assert rows[(1, 3e-3)]["status"] == "stopped" and rows[(1, 3e-3)]["epochs"] == 1  # ASHA, before its last epoch
    for lr in (1e-9, 3e-3):
        assert rows[(1e39, lr)]["status"] == "diverged" and "loss is inf" in rows[(1e39, lr)]["note"]
    folder = tmp_path / "run" / "tune" / "grid"
    diverged = json.loads((folder / f"trial_{rows[(1e39, 1e-9)]['trial']}" / "history.json").read_text())
    assert diverged["diverged"].startswith("epoch 0, step 0")  # ended at once, not retried from a checkpoint
    table = read_csv(folder / "results.csv")
    assert [r["trial"] for r in table] == [r["trial"] for r in summary["rows"]]
    assert table[0]["trial"] == summary["best"]["trial"] == rows[(1, 1e-9)]["trial"]
    assert [r["status"] for r in table][2:] == ["diverged", "diverged"]
    assert run_search(cfg, space)["rows"][0]["trial"] == table[0]["trial"]  # done: read back, not rerun

    best = load_config(summary["best_config"], (f"run.dir={tmp_path / 'again'}", "train.workers=0",
                                                "train.epochs=1"))
    assert (best.loss.lambda_au, best.train.lr, best.train.role, best.train.name) == (1, 1e-9, "teacher", None)
    assert best.data.shards == str(imbalanced_shards) and best.model.backbone == "test_resnet"
    assert Path(train(best)["best"]).is_file()


def test_a_search_killed_mid_way_resumes_with_the_same_command_keeping_finished_trials(
        tmp_path, imbalanced_shards, ray_session):
    """Two trials at once, of 1 and 8 epochs; the CLI is killed once the short one finished and the long one has a
    checkpoint, then run again: the finished trial's files stay untouched, the other one's Train run resumes."""
    import ray

    run = tmp_path / "run"
    (tmp_path / "epochs.yaml").write_text("search:\n  train.epochs: {grid: [1, 8]}\n")
    command = [sys.executable, "-m", "mtl.cli", "tune", "--space", str(tmp_path / "epochs.yaml"),
               "--address", ray.get_runtime_context().gcs_address, f"run.dir={run}",
               f"data.shards={imbalanced_shards}", *TINY, "tune.num_samples=1", "tune.max_concurrent=2",
               "tune.scheduler=none"]
    folder = run / "tune" / "epochs"

    def ready() -> bool:
        """The short trial finished and the long one's controller registered a checkpoint (a kill loses any other)."""
        trials = [p for p in folder.glob("trial_*") if p.is_dir()]
        finished = [t for t in trials if (t / "best.pt").is_file()]
        return len(finished) == 1 and any(controller_registered_a_checkpoint(t / "ray" / t.name)
                                          for t in trials if t not in finished)

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None and not ready():
            time.sleep(0.2)
        assert first.poll() is None and ready(), (tmp_path / "first.log").read_text()[-3000:]
        first.kill()
        first.wait()
    (done,) = [p.parent for p in folder.glob("trial_*/best.pt")]
    stamps = {p: p.stat().st_mtime_ns for p in done.rglob("*")}
    again = subprocess.run(command, capture_output=True, text=True, timeout=400)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "resuming the search" in output
    table = read_csv(folder / "results.csv")
    assert sorted((r["train.epochs"], r["status"], r["epochs"]) for r in table) == [("1", "finished", "1"),
                                                                                   ("8", "finished", "8")]
    assert {p: p.stat().st_mtime_ns for p in done.rglob("*")} == stamps  # the finished trial was not redone
    (long,) = [p for p in folder.glob("trial_*") if p.is_dir() and p != done]
    assert len(json.loads((long / "history.json").read_text())["history"]) == 8
    assert "resuming at epoch" in output  # the interrupted trial's Train run went on from its checkpoint
    assert (folder / "best.yaml").is_file() and "best: trial" in again.stdout


def test_a_data_error_in_a_trial_ends_the_search_in_one_line_without_a_retry(tmp_path, imbalanced_shards,
                                                                             ray_session):
    import shutil

    from mtl.errors import DataError
    from tests.train.test_driver import corrupt_member, first_shard_read_by, train_worker_actor_ids

    shards = tmp_path / "shards"
    shutil.copytree(imbalanced_shards, shards)
    victim = first_shard_read_by(shards, rank=0, world=1)
    key = corrupt_member(victim, "json", lambda text: b"[" + text[1:])  # invalid JSON, the same length
    (tmp_path / "one.yaml").write_text("fixed: {train.role: teacher}\nsearch:\n  train.lr: {grid: [1.0e-3]}\n")
    cfg, space = load_search("demo", str(tmp_path / "one.yaml"), (
        f"run.dir={tmp_path / 'run'}", f"data.shards={shards}", *TINY, "train.epochs=1", "tune.num_samples=1"))
    before = train_worker_actor_ids()
    with pytest.raises(DataError) as raised:
        run_search(cfg, space)
    assert str(raised.value).startswith(f"{victim}: sample {key!r} is malformed: ")
    assert len(train_worker_actor_ids() - before) == 1  # one Train run: Tune did not retry the trial
    assert not (tmp_path / "run" / "tune" / "one" / "summary.json").exists()  # the fixed data runs it again
