"""`mtl pipeline`: teacher -> soft labels -> students -> ensemble -> report, resumable stage by stage.

Each stage skips the work that is already done for the same config: a finished teacher or student is not
retrained (an interrupted one resumes from its last checkpoint), soft labels are kept per shard for the same
teacher file, and the ensemble is rebuilt only when its members' files changed. With tune.before_students, a
search (tune.space, e.g. tune/distill.yaml) runs between soft labels and students, and its best distillation values
train every student. Kill it anywhere and run the same command again. Scores in the report are all measured on
the same half of the validation videos: the other half tunes the AU thresholds (and the ensemble's members), for
every model alike.
"""

from __future__ import annotations

import time
from typing import Optional

from mtl import storage
from mtl.config import Config, config_dict, validate


def predict_member(checkpoint: str, shards: str, split: str = "val") -> dict:
    """Validation predictions of one saved model (a Ray task)."""
    import torch

    from mtl.evaluate import load_checkpoint, predict
    from mtl.index import load_index
    from mtl.model import create_model

    state = load_checkpoint(checkpoint)
    cfg = validate(state["config"])
    model = create_model(cfg.model, cfg.data.image_size)
    model.load_state_dict(state["model"])
    return predict(model, load_index(shards), split, cfg.data.image_size, cfg.train.eval_batch_size,
                   torch.device("cpu"), cfg.data.augment.crop_scale,
                   seq_len=cfg.model.seq_len if cfg.model.temporal else None)


def member_predictions(checkpoints: list[str], shards: str) -> list[dict]:
    """Validation predictions of every model, in parallel (one Ray task each)."""
    import ray

    task = ray.remote(num_cpus=1)(predict_member)
    return ray.get([task.remote(path, shards) for path in checkpoints])


def ensemble_stage(cfg: Config, teacher_best: str, student_bests: list[str]) -> dict:
    """Score teacher, students and their ensemble on the reported half; export the ensemble. Cached by the
    digests of the member files."""
    from mtl.ensemble import ensemble_report, export_ensemble
    from mtl.evaluate import load_checkpoint
    from mtl.index import load_index, write_json_atomic
    from mtl.model import create_model
    from mtl.soft_labels import file_digest

    folder = storage.join(storage.absolute(cfg.run.dir), "ensemble")
    digests = [file_digest(p) for p in (teacher_best, *student_bests)]
    cache = storage.join(folder, "ensemble.json")
    if storage.is_file(cache):
        stored = storage.read_json(cache)
        if stored.get("digests") == digests and stored.get("config") == config_dict(cfg):
            return stored["result"]
    preds = member_predictions([teacher_best, *student_bests], cfg.data.shards)
    seed = cfg.train.seed
    single = [ensemble_report([p], seed=seed) for p in preds]
    ensemble = ensemble_report(preds[1:], seed=seed, select=cfg.students.select)
    models = []
    for i in ensemble["members"]:
        state = load_checkpoint(student_bests[i])
        member_cfg = validate(state["config"])
        model = create_model(member_cfg.model, member_cfg.data.image_size)
        model.load_state_dict(state["model"])
        models.append(model.eval())
    export_ensemble(models, ensemble["thresholds"], cfg.data.image_size, storage.join(folder, "ensemble.pt"),
                    stored_size=load_index(cfg.data.shards).image_size, crop_scale=cfg.data.augment.crop_scale)
    result = {"teacher": single[0], "students": single[1:], "ensemble": ensemble,
              "exported": storage.join(folder, "ensemble.pt")}
    write_json_atomic(cache, {"digests": digests, "config": config_dict(cfg), "result": plain(result)})
    return plain(result)


def plain(value):
    from mtl.report import plain as to_plain

    return to_plain(value)


def run_pipeline(cfg: Config, address: Optional[str] = None) -> dict:
    """All stages for `cfg` (its train section configures the teacher); returns the report."""
    from mtl.raysession import ensure_ray
    from mtl.report import write_report
    from mtl.soft_labels import compute_soft_labels
    from mtl.students import train_students
    from mtl.train import soft_labels_dir, train

    ensure_ray(address)
    timings: dict[str, float] = {}
    started = time.time()
    teacher = train(validate({**config_dict(cfg), "train": {**config_dict(cfg)["train"], "role": "teacher"}}))
    timings["teacher"] = round(time.time() - started, 1)
    started = time.time()
    compute_soft_labels(teacher["best"], cfg.data.shards, soft_labels_dir(cfg), cfg.train.use_gpu)
    timings["soft_labels"] = round(time.time() - started, 1)
    if cfg.tune.before_students:  # search tune.space over students; all students get its best distill values
        from mtl.search import tuned_students

        started = time.time()
        cfg = tuned_students(cfg, address)
        timings["search"] = round(time.time() - started, 1)
    started = time.time()
    students = train_students(cfg, address)
    timings["students"] = round(time.time() - started, 1)
    started = time.time()
    scores = ensemble_stage(cfg, teacher["best"], [s["best"] for s in students])
    timings["ensemble"] = round(time.time() - started, 1)
    teacher_entry = {**scores["teacher"], "name": "teacher", "history": teacher["history"]}
    student_entries = [{**score, "name": s["name"], "history": s["history"]}
                       for score, s in zip(scores["students"], students)]
    return write_report(cfg.run.dir, teacher_entry, student_entries, scores["ensemble"], timings, config_dict(cfg))
