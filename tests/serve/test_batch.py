"""`mtl predict` on Ray actors: the GPU request of the actors, the same files as the local path, a bucket as the
output folder (loopback moto S3) through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import write_tiny_model_file
from mtl import storage
from mtl.cli import main
from mtl.serve.batch import predict_actor_options, predict_folder_on_ray, predictor_actor
from mtl.serve.predict import predict_folder
from tests.serve.test_predict import save_image
from tests.test_storage import moto_s3

SIZE = 16


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_tiny_model_file(tmp_path_factory.mktemp("model"), SIZE)


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory) -> Path:
    """clip1: 7 frames (the 3rd unreadable), clip2: 4 frames; several batches each at batch size 3."""
    root = tmp_path_factory.mktemp("faces")
    for i in range(1, 8):
        save_image(root / "clip1" / f"{i}.png", "RGB", (40, 40), i, "PNG")
    (root / "clip1" / "3.png").write_bytes(b"broken")
    for i in range(1, 5):
        save_image(root / "clip2" / f"{i}.jpg", "RGB", (30, 30), 10 + i, "JPEG")
    return root


@pytest.fixture(scope="module")
def local_output(model_file, two_videos, tmp_path_factory) -> tuple[Path, dict]:
    """The local path with one torch thread, as a 1-CPU Ray actor runs (CPU kernels round differently by thread
    count, in the 6th decimal)."""
    out = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, predict_folder(model_file, two_videos, out, batch_size=3, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_actors_request_a_gpu_only_for_cuda():
    assert predict_actor_options("cuda") == {"num_cpus": 1, "num_gpus": 1}
    assert predict_actor_options("cuda:0")["num_gpus"] == 1
    assert predict_actor_options("cpu") == {"num_cpus": 1, "num_gpus": 0}
    assert predictor_actor("cuda")._default_options["num_gpus"] == 1  # what Ray schedules the actors with
    assert predictor_actor("cpu")._default_options["num_gpus"] == 0


def test_cluster_path_writes_exactly_the_local_files(model_file, two_videos, local_output, tmp_path, ray_session):
    local, expected = local_output
    summary = predict_folder_on_ray(model_file, two_videos, tmp_path, batch_size=3, device="cpu", workers=2,
                                    progress=False)
    assert summary["workers"] == 2 and summary["frames_per_s"] > 0
    assert tree(tmp_path) == tree(local)
    assert len(tree(local)) == 7  # AU, EXPR, VA of 2 videos + predictions.csv
    same = ("videos", "frames", "unreadable", "filled", "skipped_videos")
    assert {k: summary[k] for k in same} == {k: expected[k] for k in same}
    assert expected["filled"] == 1


def test_predict_cli_on_ray_writes_into_a_bucket(model_file, two_videos, local_output, ray_session):
    local, _ = local_output
    with moto_s3("mtl-predict"):
        result = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--images", str(two_videos),
                                           "--out", "s3://mtl-predict/run1/pred", "--batch-size", "3",
                                           "--address", "local", "--workers", "2", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        stored = {f"{task}/{storage.name(f)}": storage.read_bytes(f)
                  for task in ("AU", "EXPR", "VA") for f in storage.list_files(f"s3://mtl-predict/run1/pred/{task}")}
        stored["predictions.csv"] = storage.read_bytes("s3://mtl-predict/run1/pred/predictions.csv")
    assert stored == tree(local)
    assert "frames/s" in result.output and "2 Ray actor(s)" in result.output
