"""`mtl bench gpu --device cpu` at tiny sizes: every row prints a figure or its skip reason, and the JSON is saved."""

import json

from click.testing import CliRunner

from mtl.cli import main


def test_bench_gpu_on_cpu_prints_every_row_and_writes_the_json(tmp_path, ray_session):
    out = tmp_path / "gpu.json"
    result = CliRunner().invoke(main, ["bench", "gpu", "--device", "cpu", "--out", str(tmp_path / "b"),
                                       "--backbone", "test_resnet", "--image-size", "32", "--steps", "2",
                                       "--warmup", "1", "--large-batch", "32", "--loader-workers", "0,1",
                                       "--cpus", "1", "--videos", "4", "--frames", "30", "--json", str(out),
                                       "--skip", "compiled"])  # torch.compile: tests/train/test_compile.py
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    assert table["device"] == "CPU" and len(table["rows"]) == 11
    for row in table["rows"]:
        assert row["row"] in result.output
        if "GPU" in row["row"]:
            assert row["status"] == "skipped: no CUDA"
        elif "compiled" in row["row"]:
            assert row["status"] == "skipped: --skip compiled" and "img_per_s" not in row
        else:
            assert row["status"] == "ok", row
            assert row["img_per_s"] > 0
    names = " | ".join(row["row"] for row in table["rows"])
    assert "compiled" in names and "1 Ray Train worker" in names and "0 loader workers" in names


def test_a_ray_row_that_the_cluster_cannot_hold_is_skipped_at_once(ray_session, tmp_path):
    """Ray Train would wait for the missing CPUs without end (seen: a 5-minute hang of --cpus 4 on 2 cores)."""
    import pytest
    import ray

    from mtl.bench.gpu import Skipped, train_rate
    from mtl.config import load_config

    cpus = int(ray.cluster_resources()["CPU"]) + 1
    payload = {"config": load_config("demo", (f"train.cpus_per_worker={cpus}",)), "device": "cpu", "ray": True}
    with pytest.raises(Skipped, match=f"one worker needs {cpus} CPU, the Ray cluster has"):
        train_rate(payload, tmp_path)
