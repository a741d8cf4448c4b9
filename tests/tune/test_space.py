"""Search-space grammar and its checks against a config, before any trial (no Ray instance needed)."""

import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from mtl.config import load_config
from mtl.errors import ConfigError
from mtl.tune.search import load_search
from mtl.tune.space import check_space, load_space


def space_file(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_the_grammar_maps_to_ray_tune_distributions(tmp_path):
    space = load_space(space_file(tmp_path, """
fixed: {train.role: student}
search:
  distill.temperature: {loguniform: [1, 8]}
  distill.alpha: {uniform: [0.0, 1.0]}
  train.lr: {loguniform: [1e-4, 3e-3]}       # no dot: YAML reads a string, accepted as a number
  train.batch_size: {choice: [16, 32]}
  loss.lambda_au: {grid: [1, 4, 8]}
  model.rnn_hidden: {randint: [32, 129]}
"""))
    tune = space.to_tune()
    assert isinstance(tune["distill.temperature"], Float) and isinstance(tune["train.lr"], Float)
    assert (tune["train.lr"].lower, tune["train.lr"].upper) == (1e-4, 3e-3)
    assert isinstance(tune["train.batch_size"], Categorical) and isinstance(tune["model.rnn_hidden"], Integer)
    assert tune["loss.lambda_au"] == {"grid_search": [1, 4, 8]}
    assert space.name == "space" and space.fixed == {"train.role": "student"}
    cfg = space.fix(load_config("demo"))
    assert cfg.train.role == "student"
    check_space(space, cfg)


@pytest.mark.parametrize("spec, message", [
    ("loss.lambda_foo: {uniform: [0, 1]}", r"space.yaml: .*'loss.lambda_foo'.*unknown key"),
    ("nosuch.key: {choice: [1]}", r"space.yaml: .*'nosuch.key'.*unknown key"),
    ("distill.alpha: {uniform: [0, 2]}", r"space.yaml: .*'distill.alpha' \(value 2.0\).*less than or equal to 1"),
    ("train.lr: {loguniform: [0, 1]}", r"space.yaml: key 'train.lr': loguniform needs 0 < low < high"),
    ("train.lr: {uniform: [1]}", r"space.yaml: key 'train.lr': uniform needs \[low, high\]"),
    ("train.lr: {normal: [0, 1]}", r"space.yaml: key 'train.lr': expected one of"),
    ("train.lr: {uniform: [a, 1]}", r"space.yaml: key 'train.lr': uniform bound 'a' is not a number"),
    ("model.rnn_hidden: {randint: [1.5, 4]}", r"space.yaml: key 'model.rnn_hidden': randint needs integer"),
    ("run.dir: {choice: [a, b]}", r"space.yaml: key 'run.dir': set by the search itself"),
])
def test_a_bad_space_fails_fast_naming_the_file_and_key(tmp_path, spec, message):
    path = space_file(tmp_path, f"search:\n  {spec}\n")
    with pytest.raises(ConfigError, match=message):
        load_search("demo", str(path), ("data.shards=/nowhere",))


def test_space_files_must_have_a_search_and_fixed_keys_must_be_valid(tmp_path):
    with pytest.raises(ConfigError, match="space.yaml: expected the mappings 'search'"):
        load_space(space_file(tmp_path, "fixed: {train.role: student}\n"))
    with pytest.raises(ConfigError, match="space.yaml: fixed: config key 'train.role'"):
        load_search("demo", str(space_file(tmp_path, "fixed: {train.role: pupil}\nsearch:\n"
                                                     "  train.lr: {choice: [0.1]}\n")))
    with pytest.raises(ConfigError, match="no such file"):
        load_space(tmp_path / "missing.yaml")


def test_the_shipped_spaces_check_against_the_presets_and_overrides_beat_fixed_keys():
    for name, role in (("loss_weights", "teacher"), ("distill", "student")):
        for preset in ("demo", "paper"):
            cfg, space = load_search(preset, f"tune/{name}.yaml")
            assert cfg.train.role == role and cfg.tune.space == f"tune/{name}.yaml" and space.name == name
    cfg, _ = load_search("demo", "tune/distill.yaml", ("train.role=teacher",))
    assert cfg.train.role == "teacher"
    with pytest.raises(ConfigError, match="tune.space"):
        load_search("demo", None)
    cfg, _ = load_search("demo", None, ("tune.space=tune/distill.yaml",))
    assert cfg.train.role == "student"
