"""The per-worker loop's validation: epochs are chosen on the selection half of the validation videos only."""

import os
import re

import pytest

from mtl.eval.evaluate import predict_model_file, score
from mtl.eval.metrics import selection_total
from mtl.eval.split import halves, video_names
from tests.train.test_driver import config
from mtl.train.driver import train


def test_validation_scores_only_the_selection_half_with_the_reference_total(tmp_path, imbalanced_shards):
    outcome = train(config(tmp_path / "run", imbalanced_shards, "train.workers=0", "train.epochs=1"))
    preds = predict_model_file(outcome["best"], imbalanced_shards)
    selection, report = halves(preds, seed=0)
    assert video_names(preds, selection) and video_names(preds, report)
    assert not set(video_names(preds, selection)) & set(video_names(preds, report))
    expected = score(preds.select(selection))
    logged = outcome["history"][-1]
    for task in ("au", "expr", "va"):
        assert logged[f"val_{task}"] == pytest.approx(expected[task], abs=1e-6)
    va = expected["details"]["va"]
    assert logged["val_total"] == pytest.approx(expected["au"] + expected["expr"] + va["ccc_valence"]
                                                + va["ccc_arousal"], abs=1e-6)
    assert selection_total(expected, "report") == pytest.approx(expected["total"])
    assert score(preds)["total"] != pytest.approx(expected["total"], abs=1e-9)  # the whole split scores otherwise


def test_a_checkpoint_that_finds_the_disk_full_leaves_no_part_of_state_pt(tmp_path, monkeypatch):
    """The loop's save (state.pt) and its copy into Ray Train's storage (upload_checkpoint, here with the storage
    context of a local storage path): DiskFull naming the file, no truncated, empty or temporary file left."""
    import types

    import pyarrow.fs
    import torch

    from mtl.storage import DiskFull
    from mtl.train.loop import save_state, upload_checkpoint
    from tests.test_storage import no_space, small_disk

    state = {"w": torch.zeros(1 << 18)}  # 1 MB
    save_state(state, tmp_path / "scratch" / "state.pt")  # a checkpoint folder to copy
    with small_disk(tmp_path / "disk", 128) as mounted:
        if not mounted:
            monkeypatch.setattr(os, "fsync", no_space)
        with pytest.raises(DiskFull, match=rf"^{tmp_path}/disk/epoch/state.pt: no space left on device \(\d"):
            save_state(state, tmp_path / "disk" / "epoch" / "state.pt")
        assert os.listdir(tmp_path / "disk" / "epoch") == []
        context = types.SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(),
                                        build_checkpoint_path_from_name=lambda name: f"{tmp_path}/disk/{name}")
        checkpoint = types.SimpleNamespace(path=str(tmp_path / "scratch"))
        with pytest.raises(DiskFull, match=rf"^{tmp_path}/disk/checkpoint_0001/state.pt: no space left on device"):
            upload_checkpoint(checkpoint, "checkpoint_0001", context)
        assert sorted(os.listdir(tmp_path / "disk")) == ["epoch"]  # the checkpoint folder begun is gone


def test_a_full_disk_in_a_local_mode_run_is_one_line_and_exit_code_2(tmp_path, imbalanced_shards, monkeypatch):
    import torch
    from click.testing import CliRunner

    from mtl.cli import main
    from tests.test_storage import small_disk
    from tests.train.test_driver import TINY

    run = tmp_path / "run"
    with small_disk(run, 512) as mounted:  # room for config.json, not for the 5 MB state.pt
        if not mounted:
            save = torch.save

            def half_saved(obj, f, *args, **kwargs):  # a part reaches the file, then the disk is full
                save({"part": 1}, f)
                raise OSError(28, os.strerror(28))

            monkeypatch.setattr(torch, "save", half_saved)
        result = CliRunner().invoke(main, ["train", f"data.shards={imbalanced_shards}", f"run.dir={run}", *TINY,
                                           "train.workers=0", "train.epochs=1"])
        state = run / "teacher" / "local" / "epoch_0000" / "state.pt"
        assert result.exit_code == 2, result.output
        assert re.fullmatch(rf"error: {state}: no space left on device \(\d+\.\d MB free on /\S*\)\n", result.output)
        files = [str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()]
        assert [f for f in files if not f.startswith(("wandb/", "logs/"))] == ["teacher/config.json"]  # no state.pt part


def test_checkpoint_folders_the_snapshot_does_not_name_are_removed_after_the_training(tmp_path):
    """What failed attempts leave in Ray Train's run folder (a checkpoint half copied, or copied but never
    registered) goes once the training has finished; what the checkpoint manager names stays."""
    import json

    from mtl.train.driver import SNAPSHOT, remove_stray_checkpoints

    run = tmp_path / "ray" / "teacher"
    for name in ("checkpoint_2026-01-01_00-00-01.000001", "checkpoint_2026-01-01_00-00-02.000002",
                 "checkpoint_2026-01-01_00-00-03.000003"):
        (run / name).mkdir(parents=True)
        (run / name / "state.pt").write_bytes(b"x")
    assert remove_stray_checkpoints(str(run)) == []  # no snapshot: nothing is known, nothing removed
    (run / SNAPSHOT).write_text(json.dumps({  # the fields that name checkpoints, as Ray 2.60 writes them
        "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_2026-01-01_00-00-01.000001"}],
        "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_2026-01-01_00-00-01.000001"},
        "pending_training_results": [{"checkpoint_dir_name": "checkpoint_2026-01-01_00-00-03.000003"}]}))
    assert remove_stray_checkpoints(str(run)) == ["checkpoint_2026-01-01_00-00-02.000002"]
    assert sorted(os.listdir(run)) == ["checkpoint_2026-01-01_00-00-01.000001",
                                       "checkpoint_2026-01-01_00-00-03.000003", SNAPSHOT]


def test_later_validations_predict_only_the_selection_videos_with_the_same_scores(tmp_path, imbalanced_shards):
    """The first validation predicts the whole split and draws the half; a later one predicts only that half's
    videos: the same frames, scores equal to float rounding (batches hold other frames)."""
    import numpy as np
    import torch

    from mtl.data.index import load_index
    from mtl.eval.split import selection_half
    from mtl.train.loop import training_model, validation

    cfg = config(tmp_path / "run", imbalanced_shards)
    torch.manual_seed(0)
    model, index = training_model(cfg, torch.device("cpu")), load_index(imbalanced_shards)
    first, selection = validation(model, index, cfg, torch.device("cpu"), 0, 1, None)
    whole = whole_split(model, index, cfg)
    assert first.keys.tolist() == selection_half(whole, cfg.eval.split_seed).keys.tolist()
    assert selection == set(video_names(whole, halves(whole, cfg.eval.split_seed)[0]))
    assert len(first) < len(whole)
    later, again = validation(model, index, cfg, torch.device("cpu"), 0, 1, selection)
    assert again is selection and later.keys.tolist() == first.keys.tolist()
    for name in ("au_prob", "expr_prob", "va_pred"):
        np.testing.assert_allclose(getattr(later, name), getattr(first, name), rtol=0, atol=1e-5)
    for name in ("au_true", "expr_true", "va_true"):
        assert np.array_equal(getattr(later, name), getattr(first, name))
    assert score(later)["total"] == pytest.approx(score(first)["total"], abs=1e-4)


def whole_split(model, index, cfg):
    """The model's predictions on the whole validation split, as `mtl evaluate` makes them."""
    import torch

    from mtl.eval.evaluate import predict

    return predict(model, index, "val", cfg.data.image_size, cfg.train.eval_batch_size, torch.device("cpu"),
                   cfg.data.augment.crop_scale)
