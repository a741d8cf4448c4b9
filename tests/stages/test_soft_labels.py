"""Soft labels: computed per shard on Ray, joined to the right samples in the stream, resumable; students train."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.config import load_config
from mtl.data.stream import TrainStream
from tests.conftest import stream_config, tiny
from mtl.checkpoint import read_model_file
from mtl.eval.evaluate import predict
from mtl.data.index import load_index
from mtl.models.factory import create_model
from mtl.data.soft_join import soft_label_path
from mtl.stages.soft_labels import compute_soft_labels
from mtl.train.driver import train

TINY = tiny("data.loader_workers=1", "train.workers=0")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, trained_run):
    """A run folder holding a copy of the session's trained tiny teacher (these tests write soft labels beside it)."""
    run = tmp_path_factory.mktemp("distill")
    best = run / "teacher" / "best.pt"
    best.parent.mkdir()
    shutil.copyfile(trained_run.teacher, best)
    return run, best


def test_soft_labels_hold_the_teachers_outputs_for_every_training_sample(teacher, imbalanced_shards, ray_session):
    run, best = teacher
    manifest = compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    index = load_index(imbalanced_shards)
    assert sum(manifest["shards"].values()) == index.stats["train"].samples
    rows = {}
    for url in index.shard_urls("train"):
        with np.load(soft_label_path(run / "soft_labels", url)) as data:
            rows.update({k: (data["au"][i], data["expr"][i]) for i, k in enumerate(data["keys"].tolist())})
    assert len(rows) == index.stats["train"].samples
    with np.load(soft_label_path(run / "soft_labels", index.shard_urls("train")[0])) as data:  # the centre view's format
        assert sorted(data.files) == ["au", "expr", "keys", "va"] and data["va"].shape[1:] == (40,)
    assert not {"views", "augment", "stored_size"} & set(manifest)
    state = read_model_file(best)
    model = create_model(load_config("demo", TINY).model, 16)
    model.load_state_dict(state["model"])
    direct = predict(model, index, "train", 16, 64, torch.device("cpu"))
    for key, au_prob in zip(direct.keys[:40], direct.au_prob[:40]):
        assert np.allclose(rows[key][0], au_prob, atol=2e-3)  # float16 storage


def test_the_stream_joins_soft_labels_to_the_right_samples(teacher, imbalanced_shards, ray_session):
    run, best = teacher
    compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    index = load_index(imbalanced_shards)
    table = {}
    for url in index.shard_urls("train"):
        with np.load(soft_label_path(run / "soft_labels", url)) as data:
            table.update({k: data["va"][i] for i, k in enumerate(data["keys"].tolist())})
    stream = iter(TrainStream(index, stream_config(batch_size=32), soft_labels=str(run / "soft_labels")))
    batch = next(stream).unpacked()
    assert bool(batch["soft_mask"].all()) and batch["soft_va"].shape == (32, 40)
    for key, soft_va in zip(batch["key"], batch["soft_va"]):
        assert np.allclose(soft_va.numpy(), table[key].astype(np.float32))


def test_soft_labels_resume_and_follow_the_teacher(teacher, imbalanced_shards, ray_session, tmp_path):
    run, best = teacher
    out = tmp_path / "soft"
    compute_soft_labels(best, imbalanced_shards, out, progress=False)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    victim = sorted(out.glob("*.npz"))[0]
    victim.unlink()
    compute_soft_labels(best, imbalanced_shards, out, progress=False)
    again = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert set(again) == set(first)
    assert all(again[name] == first[name] for name in first if name != victim.name)  # only the missing shard redone
    other = tmp_path / "other.pt"
    state = read_model_file(best)
    state["epoch"] = 99
    torch.save(state, other)
    compute_soft_labels(other, imbalanced_shards, out, progress=False)
    assert all(p.stat().st_mtime_ns != first.get(p.name) for p in out.glob("*.npz"))  # another teacher: all redone


@pytest.mark.parametrize("on_the_fly", [False, True])
def test_a_student_trains_from_soft_labels_or_the_teacher_on_the_fly(teacher, imbalanced_shards, ray_session,
                                                                    on_the_fly):
    run, best = teacher
    compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    cfg = load_config("demo", (f"run.dir={run}", f"data.shards={imbalanced_shards}", "train.epochs=1", *TINY,
                               "train.role=student", f"distill.on_the_fly={str(on_the_fly).lower()}",
                               "train.seed=1"))
    outcome = train(cfg)
    assert Path(outcome["best"]).parent.name == "student"
    assert np.isfinite(outcome["history"][0]["train_loss"]) and "val_total" in outcome["metrics"]


# K stored augmentation views per sample (distill.views, docs/recipe.md §3.1)

VIEWS, SEED = 3, 7
AUGMENT = dict(crop_scale=1.2, flip=0.5, jitter=0.3)  # 20 px faces: 17 px windows, resized to the teacher's 16


def shard_images(url: str) -> dict:
    """{key: uint8 [R, R, 3]} of a shard, read with tarfile and PIL (not the stream's reader or decoder)."""
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(url) as tar:
        return {member.name.removesuffix(".jpg"): np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read()))
                                                             .convert("RGB"))
                for member in tar.getmembers() if member.name.endswith(".jpg")}


def stored_views(folder: Path, index) -> dict:
    table = {}
    for url in index.shard_urls("train"):
        with np.load(soft_label_path(folder, url)) as data:
            table.update({k: {name: data[name][i] for name in data.files if name != "keys"}
                          for i, k in enumerate(data["keys"].tolist())})
    return table


@pytest.fixture(scope="module")
def views_folder(tmp_path_factory, imbalanced_shards, ray_session):
    from mtl.config import AugmentConfig
    from tests.conftest import write_tiny_model_file

    root = tmp_path_factory.mktemp("views")
    best = write_tiny_model_file(root, 16)
    manifest = compute_soft_labels(best, imbalanced_shards, root / "soft", progress=False, views=VIEWS,
                                   augment=AugmentConfig(**AUGMENT), seed=SEED)
    return best, root / "soft", manifest


def test_stored_views_hold_the_teachers_outputs_on_each_views_exact_input(views_folder, imbalanced_shards):
    from mtl.checkpoint import load_model
    from mtl.data.augment import to_model_input

    best, folder, manifest = views_folder
    index = load_index(imbalanced_shards)
    assert manifest["views"] == VIEWS and manifest["augment"] == AUGMENT and manifest["stored_size"] == 20
    table = stored_views(folder, index)
    assert len(table) == index.stats["train"].samples
    model, _ = load_model(best)
    url = index.shard_urls("train")[1]
    for key, image in shard_images(url).items():
        row = table[key]
        assert row["au"].shape == (VIEWS, 8) and row["va"].dtype == np.float16 and row["offsets"].shape == (VIEWS, 2)
        assert len({tuple(o) for o in row["offsets"].tolist()}) > 1 or len(set(row["flip"].tolist())) > 1
        windows = []
        for (top, left), flip in zip(row["offsets"].tolist(), row["flip"].tolist()):
            window = image[top:top + 17, left:left + 17]
            windows.append(window[:, ::-1] if flip else window)  # the flip, applied here before resize
        with torch.no_grad():
            out = model(to_model_input(torch.from_numpy(np.ascontiguousarray(np.stack(windows))), 16,
                                       jitter=torch.from_numpy(row["jitter"])))
        assert np.allclose(row["au"], torch.sigmoid(out["au"]).numpy(), atol=2e-3)  # float16 storage
        assert np.allclose(row["va"], out["va"].numpy(), atol=1e-2, rtol=2e-3)
        assert float((out["va"][0] - out["va"][1:]).abs().max()) > 0.02  # the views differ, beyond the tolerance


def test_views_are_the_same_on_every_run_whatever_the_shard(views_folder, imbalanced_shards, tmp_path):
    import zlib

    from mtl.config import AugmentConfig
    from mtl.data.augment import draw_batch
    from mtl.eval.labelling import label_shard

    best, folder, _ = views_folder
    index = load_index(imbalanced_shards)
    compute_soft_labels(best, imbalanced_shards, tmp_path / "again", progress=False, views=VIEWS,
                        augment=AugmentConfig(**AUGMENT), seed=SEED)
    for url in index.shard_urls("train"):  # a second run of the stage (other Ray scheduling): the same files
        with np.load(soft_label_path(folder, url)) as first, np.load(soft_label_path(tmp_path / "again", url)) as again:
            assert sorted(first.files) == sorted(again.files) == ["au", "expr", "flip", "jitter", "keys", "offsets", "va"]
            assert all(np.array_equal(first[name], again[name]) for name in first.files)
    manifest = compute_soft_labels(best, imbalanced_shards, tmp_path / "again", progress=False, views=2,
                                   augment=AugmentConfig(**AUGMENT), seed=SEED)  # another K: every shard redone
    assert manifest["views"] == 2 and len(manifest["shards"]) == len(index.shard_urls("train"))
    for url in index.shard_urls("train"):
        with np.load(soft_label_path(tmp_path / "again", url)) as data:
            assert data["au"].shape[1:] == (2, 8) and data["jitter"].shape[1:] == (2, 3)
    url = index.shard_urls("train")[2]
    views = {"views": VIEWS, "augment": AUGMENT, "seed": SEED}
    label_shard(str(best), url, str(tmp_path / "alone.npz"), 20, batch_size=5, views=views)  # in-process, other chunks
    with np.load(soft_label_path(folder, url)) as first, np.load(tmp_path / "alone.npz") as alone:
        assert all(np.array_equal(first[name], alone[name]) for name in ("keys", "offsets", "flip", "jitter"))
        assert np.allclose(first["va"], alone["va"], atol=1e-3)  # float16 rounding of other batch sizes, no more
        for i, key in enumerate(first["keys"].tolist()):  # seeded by (train.seed, CRC-32 of the key), nothing else
            drawn = draw_batch(np.random.default_rng([SEED, zlib.crc32(key.encode())]), VIEWS, 20,
                               AugmentConfig(**AUGMENT))
            assert np.array_equal(first["offsets"][i], drawn.offsets) and np.array_equal(first["jitter"][i], drawn.jitter)
    label_shard(str(best), url, str(tmp_path / "other.npz"), 20, views={**views, "seed": SEED + 1})
    with np.load(soft_label_path(folder, url)) as first, np.load(tmp_path / "other.npz") as other:
        assert not np.array_equal(first["jitter"], other["jitter"])


@pytest.mark.parametrize("mode", ["mixed", "per_task"])
def test_the_stream_replays_a_stored_view_with_its_pixels_draws_and_outputs(views_folder, imbalanced_shards, mode):
    _, folder, _ = views_folder
    index = load_index(imbalanced_shards)
    table = stored_views(folder, index)
    images = {k: v for url in index.shard_urls("train") for k, v in shard_images(url).items()}
    cfg = stream_config(batch_size=24, augment=AUGMENT, batch_mode=mode, shuffle_buffer=50, seed=3)
    batch = next(iter(TrainStream(index, cfg, soft_labels=str(folder)))).unpacked()  # per_task: merged
    picked = []
    assert len(batch["key"]) == (72 if mode == "per_task" else 24)
    assert bool(batch["soft_mask"].all())
    for i, key in enumerate(batch["key"]):
        view = int(batch["soft_view"][i])
        row, picked = table[key], picked + [view]
        top, left = row["offsets"][view].tolist()
        assert np.array_equal(batch["image"][i].numpy(), images[key][top:top + 17, left:left + 17])
        assert bool(batch["flip"][i]) == bool(row["flip"][view])
        assert np.array_equal(batch["jitter"][i].numpy(), row["jitter"][view])
        for name in ("au", "expr", "va"):
            assert np.array_equal(batch[f"soft_{name}"][i].numpy(), row[name][view].astype(np.float32))
    assert set(picked) == set(range(VIEWS))  # a view drawn per sample, not always the first


def test_a_temporal_teacher_with_views_is_refused_before_any_ray_task(tmp_path, imbalanced_shards):
    from mtl.config import config_dict, validate
    from mtl.errors import ConfigError

    cfg = validate({"model": {"backbone": "test_resnet", "temporal": True, "seq_len": 4}})
    torch.save({"model": {}, "config": config_dict(cfg), "epoch": 0}, tmp_path / "best.pt")
    (tmp_path / "soft").mkdir()
    (tmp_path / "soft" / "kept.npz").write_bytes(b"an earlier file")
    with pytest.raises(ConfigError, match=r"^config key 'distill.views': 2 stored views are per frame, but the "
                                          r"teacher .*best\.pt is temporal \(CNN-RNN windows are out of scope\)"):
        compute_soft_labels(tmp_path / "best.pt", imbalanced_shards, tmp_path / "soft", progress=False, views=2)
    assert [p.name for p in (tmp_path / "soft").iterdir()] == ["kept.npz"]  # nothing written, nothing wiped


def test_the_stages_digest_follows_the_views_and_what_they_are_drawn_with():
    from mtl.config import Config, updated
    from mtl.stages.soft_labels import SoftLabelsStage

    sections = SoftLabelsStage().config_sections
    centre, views = Config(), updated(Config(), {"distill.views": 4})
    assert sections(centre) != sections(views)
    assert sections(updated(centre, {"data.augment.flip": 0.0, "train.seed": 5})) == sections(centre)  # unused at K=0
    for change in ({"data.augment.flip": 0.0}, {"train.seed": 5}):
        assert sections(updated(views, change)) != sections(views)


def test_a_student_trains_from_stored_views_and_refuses_another_k(teacher, imbalanced_shards, ray_session):
    from mtl.errors import DataError

    run, best = teacher
    cfg = load_config("demo", (f"run.dir={run}", f"data.shards={imbalanced_shards}", "train.epochs=1", *TINY,
                               "train.role=student", "train.name=student_views", "distill.views=2",
                               f"distill.soft_labels={run / 'soft_views'}"))
    compute_soft_labels(best, imbalanced_shards, run / "soft_views", progress=False, views=2,
                        augment=cfg.data.augment, seed=cfg.train.seed)
    outcome = train(cfg)
    assert np.isfinite(outcome["history"][0]["train_loss"]) and "val_total" in outcome["metrics"]
    with pytest.raises(DataError, match="with 2 augmentation views per sample, but this student asks distill.views=3"):
        train(cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"views": 3})}))


# Proven per file (issue #20 item 7): each file's SHA-256 and keys in the manifest, checked before any worker starts

def tar_keys(url: str) -> list[str]:
    """Sample keys of a shard, read with tarfile (not the stream's reader)."""
    import tarfile

    with tarfile.open(url) as tar:
        return [m.name.removesuffix(".jpg") for m in tar.getmembers() if m.name.endswith(".jpg")]


def student_config(run: Path, shards: Path, *extra: str):
    return load_config("demo", (f"run.dir={run}", f"data.shards={shards}", "train.epochs=1", *TINY,
                                "train.role=student", "distill.on_the_fly=false", *extra))


def test_the_manifest_records_each_files_digest_and_its_shards_keys(teacher, imbalanced_shards, ray_session):
    import hashlib

    run, best = teacher
    manifest = compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    index = load_index(imbalanced_shards)
    assert manifest["format"] == 2 and len(manifest["files"]) == len(index.shards["train"])
    for info in index.shards["train"]:
        path = Path(soft_label_path(run / "soft_labels", info.name))
        keys = tar_keys(str(imbalanced_shards / info.name))
        assert manifest["files"][path.name] == {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "keys": info.samples,
            "keys_sha256": hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest(),
            "shards": {info.name: info.sha256}}


def test_one_shards_labels_copied_over_anothers_are_refused_before_training(teacher, imbalanced_shards, ray_session,
                                                                           tmp_path):
    from mtl.data.soft_join import SoftLabels
    from mtl.errors import DataError
    from mtl.train.driver import check_inputs

    run, best = teacher
    compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    shutil.copytree(run / "soft_labels", tmp_path / "soft")
    first, second = (info.name for info in load_index(imbalanced_shards).shards["train"][:2])
    shutil.copyfile(soft_label_path(tmp_path / "soft", first), soft_label_path(tmp_path / "soft", second))
    cfg = student_config(run, imbalanced_shards, f"distill.soft_labels={tmp_path / 'soft'}")
    with pytest.raises(DataError) as caught:
        check_inputs(cfg)  # what `train` runs before Ray: nothing retried
    assert str(caught.value) == (f"{soft_label_path(tmp_path / 'soft', second)}: SHA-256 differs from manifest.json: "
                                 f"it holds the soft labels of {first}, not of {second} (copied over it?): re-run "
                                 "`mtl soft-labels`")
    with pytest.raises(DataError, match=r"train-000001\.npz: changed since its soft labels were computed"):
        # in a worker
        SoftLabels(tmp_path / "soft", "abaw2020").lookup(second, tar_keys(str(imbalanced_shards / second))[0])
    manifest = compute_soft_labels(best, imbalanced_shards, tmp_path / "soft", progress=False)  # the hint: redone
    original = json.loads((run / "soft_labels" / "manifest.json").read_text())["files"]
    redone = Path(soft_label_path(tmp_path / "soft", second)).name
    assert all(manifest["files"][name] == original[name] for name in original if name != redone)
    assert manifest["files"][redone]["keys_sha256"] == original[redone]["keys_sha256"]  # the shard's keys again
    check_inputs(cfg)


def test_stored_soft_labels_without_their_teacher_are_refused_in_one_line(teacher, imbalanced_shards, ray_session,
                                                                         tmp_path):
    from mtl.train.driver import check_inputs

    run, best = teacher
    compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    gone = tmp_path / "gone.pt"
    with pytest.raises(FileNotFoundError) as caught:
        check_inputs(student_config(run, imbalanced_shards, f"distill.teacher={gone}"))
    assert str(caught.value).startswith(f"{gone}: the teacher these soft labels must come from is missing; ")
    assert "\n" not in str(caught.value)


def test_a_pipeline_rerun_over_labels_of_the_older_format_recomputes_them(teacher, imbalanced_shards, ray_session,
                                                                        tmp_path):
    from mtl.data.soft_join import SoftLabels
    from mtl.family import FrameFamily
    from mtl.stages.base import Stage, StageContext, TrainingResult, record_result
    from mtl.stages.pipeline import run_stage
    from mtl.stages.soft_labels import SoftLabelsResult, SoftLabelsStage

    run, best = teacher
    cfg = student_config(tmp_path, imbalanced_shards)
    stage, folder = SoftLabelsStage(), tmp_path / "soft_labels"
    ctx = StageContext(cfg, results={"teacher": TrainingResult("teacher", str(best), {}, [])})
    manifest = compute_soft_labels(best, imbalanced_shards, folder, progress=False)
    old = {key: value for key, value in manifest.items() if key not in ("format", "files")}  # as an older mtl wrote
    (folder / "manifest.json").write_text(json.dumps(old))
    record_result(stage, cfg, Stage.digest(stage, cfg, ctx), SoftLabelsResult(str(folder), manifest["shards"]))
    written = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz")}
    run_stage(stage, ctx)  # the older stage.json is not done: the stage runs, and redoes every file
    assert all(p.stat().st_mtime_ns != written[p.name] for p in folder.glob("*.npz"))
    assert json.loads((folder / "manifest.json").read_text())["format"] == 2
    index = load_index(imbalanced_shards)
    SoftLabels(folder, index.protocol).check(best, FrameFamily().student_labels(index), {"unit": "frame"},
                                             index=index)
