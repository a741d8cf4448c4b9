"""Typed configs: the packaged presets, dotted overrides, and errors that name the key."""

import os

import pytest

from mtl.config import config_dict, load_config
from mtl.errors import ConfigError


def test_the_paper_preset_is_the_reference_recipe_value_by_value():
    """docs/recipe.md §0 (Multitask-CNN), with §2-§4 for losses, distillation and balancing."""
    cfg = load_config("paper")
    assert (cfg.model.backbone, cfg.model.weights, cfg.data.image_size) == ("resnet50_ferplus", None, 112)
    assert cfg.model.require_weights and cfg.model.backbone_args == {"dropout": 0.5}  # FER+ weights, as the reference
    assert (cfg.data.batch_mode, cfg.train.batch_size) == ("per_task", 20)  # 20 frames of each task per step
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.betas, cfg.train.weight_decay) == ("adam", 1e-4, (0.5, 0.999),
                                                                                            0.0)
    assert (cfg.train.schedule, cfg.train.warmup_epochs) == ("constant", 0)  # StepLR was never stepped
    assert (cfg.train.role, cfg.train.epochs) == ("teacher", 8)
    assert (cfg.loss.lambda_au, cfg.loss.lambda_expr, cfg.loss.lambda_va, cfg.loss.ccc_weight) == (8.0, 1.0, 1.0, 1.0)
    assert (cfg.students.count, cfg.students.epochs, cfg.students.backbones) == (5, 3, [])
    assert (cfg.distill.temperature, cfg.distill.alpha, cfg.distill.t_squared) == (1.5, 0.4, False)
    assert cfg.distill.task_weights is False  # the reference's students: every head weight 1, the sum over 3 batches / 3
    assert (cfg.data.balance, cfg.data.mean_ir, cfg.data.max_clone_fraction) == ("paper", 2.0, 0.5)
    assert (cfg.data.augment.crop_scale, cfg.data.augment.flip, cfg.data.augment.jitter) == (1.2, 0.5, 0.0)


def test_the_demo_preset_validates_and_overrides_apply_by_dotted_key():
    cfg = load_config("demo", ("train.lr=3e-4", "students.count=2", "data.balance=none", "train.betas=[0.5, 0.9]"))
    assert (cfg.train.lr, cfg.students.count, cfg.data.balance, cfg.train.betas) == (3e-4, 2, "none", (0.5, 0.9))


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "'train.nope': unknown key"),
    ("nosection.key=1", "'nosection': unknown key"),
    ("train.epochs=many", "'train.epochs'"),
    ("data.balance=[1, 2]", "'data.balance'"),  # names are checked against the registry where used
    ("distill.alpha=2", "'distill.alpha'"),
    ("train.lr", "expected key=value"),
])
def test_bad_overrides_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", (override,))


def test_a_missing_or_malformed_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(str(bad))


def test_updated_sets_dotted_keys_on_a_copy_and_validates_each():
    from mtl.config import updated

    cfg = load_config("demo")
    student = updated(cfg, {"train.role": "student", "data.augment.flip": 0.0})
    assert (student.train.role, student.data.augment.flip) == ("student", 0.0)
    assert (cfg.train.role, cfg.data.augment.flip) == ("teacher", load_config("demo").data.augment.flip)
    with pytest.raises(ConfigError, match="'train.epochs'"):
        updated(cfg, {"train.epochs": 0})
    with pytest.raises(ConfigError, match="'train.nope': unknown key"):
        updated(cfg, {"train.nope": 1})


def test_the_abaw3_preset_is_the_paper_recipe_on_the_abaw3_protocol():
    from mtl.config import config_dict

    paper, abaw3 = config_dict(load_config("paper")), config_dict(load_config("abaw3"))
    assert (abaw3["data"]["protocol"], paper["data"]["protocol"]) == ("abaw3", "abaw2020")
    assert load_config("abaw3").data.schema().num_au == 12
    differing = {(section, key) for section in paper for key in paper[section]
                 if paper[section][key] != abaw3[section][key]}
    assert differing == {("data", "protocol"), ("run", "dir")}


def test_extends_merges_sections_key_by_key_and_refuses_cycles(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train: {epochs: 3, lr: 0.01}\ndata: {image_size: 32}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\ntrain: {epochs: 5}\n")  # relative to the file naming it
    cfg = load_config(str(child))
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.image_size) == (5, 0.01, 32)
    base.write_text("extends: child.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(child))


def test_expression_classes_of_another_protocol_are_refused_naming_it():
    assert load_config("demo", ("data.protocol=abaw3", "data.downsample.expr={Other: 2}")).data.downsample.expr == \
        {"Other": 2}
    with pytest.raises(ConfigError, match="'Other' is not an expression class of protocol abaw2020"):
        load_config("demo", ("data.downsample.expr={Other: 2}",))
    with pytest.raises(ConfigError, match="unknown protocol 'abaw9'"):
        load_config("demo", ("data.protocol=abaw9",))


def test_local_paths_become_absolute_against_the_working_directory_and_uris_stay(tmp_path, monkeypatch):
    """Issue #20.9: what reaches Ray names the same files on every worker."""
    from mtl.config import absolute_paths, load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config("demo", ("data.shards=shards", "run.dir=runs/r1", "model.weights=w/backbone.pth",
                               "distill.teacher=s3://b/teacher.pt", "distill.soft_labels=pipe:cat x",
                               "runtime.local_dir=~/scratch"))
    assert cfg.data.shards == str(tmp_path / "shards") and cfg.run.dir == str(tmp_path / "runs" / "r1")
    assert cfg.model.weights == str(tmp_path / "w" / "backbone.pth")
    assert cfg.runtime.local_dir == os.path.expanduser("~/scratch")
    assert (cfg.distill.teacher, cfg.distill.soft_labels) == ("s3://b/teacher.pt", "pipe:cat x")
    assert absolute_paths(cfg) is cfg  # nothing left to change
    kept = load_config("demo", ("data.shards=shards",), absolute=False)
    assert kept.data.shards == "shards"  # `mtl submit` refuses relative paths rather than naming this machine's


def test_train_use_gpu_is_an_alias_of_runtime_device_that_says_so():
    with pytest.warns(FutureWarning, match="runtime.device"):
        assert load_config("demo", ["train.use_gpu=true"]).runtime.device == "cuda"
    assert load_config("demo", ["train.use_gpu=false"]).runtime.device == "cpu"  # a stored run's former default
    assert load_config("demo").runtime.device == "auto"
    with pytest.warns(FutureWarning):
        assert load_config("demo", ["train.use_gpu=true", "runtime.device=cuda"]).runtime.device == "cuda"
    with pytest.raises(ConfigError, match="contradicts"):
        load_config("demo", ["train.use_gpu=true", "runtime.device=cpu"])
    assert "use_gpu" not in config_dict(load_config("demo", ["train.use_gpu=false"]))["train"]


def test_auto_device_is_decided_by_the_gpus_there_are(monkeypatch):
    import ray
    import torch

    from mtl.jobs.ray_session import resolve_device

    auto = load_config("demo")
    assert resolve_device(load_config("demo", ["runtime.device=cpu"])).runtime.device == "cpu"
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(auto).runtime.device == "cuda"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device(auto).runtime.device == "cpu"
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # on Ray: the cluster's GPUs, not this machine's
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8, "GPU": 1})
    assert resolve_device(auto).runtime.device == "cuda"
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8})
    assert resolve_device(auto).runtime.device == "cpu"


def test_the_config_checks_its_own_inputs_where_a_stage_needs_them(tmp_path):
    """data.shards and model.weights: a config that lacks them loads (a paper preset evaluates without weights);
    the stage that needs them asks the config, which names the key."""
    paper = load_config("paper")
    with pytest.raises(ConfigError, match=r"^config key 'data.shards': required \(a shard folder written by `mtl "
                                          r"prepare`\)$"):
        paper.data.require_shards()
    assert load_config("paper", (f"data.shards={tmp_path}",)).data.require_shards() == str(tmp_path)
    with pytest.raises(ConfigError, match=r"^config key 'model.weights': required \(model.require_weights\): "
                                          r"resnet50_ferplus starts from pretrained weights, `resnet50_ferplus_dag"):
        paper.model.check_weights()
    load_config("paper", ("model.require_weights=false",)).model.check_weights()
    with pytest.raises(FileNotFoundError, match=rf"^config key 'model.weights': {tmp_path / 'absent.pth'}: no such "
                                                r"file$"):
        load_config("paper", (f"model.weights={tmp_path / 'absent.pth'}",)).model.check_weights()
    (tmp_path / "w.pth").write_bytes(b"")
    load_config("demo", (f"model.weights={tmp_path / 'w.pth'}",)).model.check_weights()  # there: the contents are
    # the driver's to check (mtl.models.backbones.check_weights_file)
