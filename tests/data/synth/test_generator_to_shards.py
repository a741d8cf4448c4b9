"""synth -> prepare -> read back: the shards hold exactly the raw annotations of the frames that have a face."""

import json
from pathlib import Path

import pytest
import webdataset as wds

from mtl.data.index import load_index
from mtl.data.prepare import prepare
from mtl.data.synth.generator import synthesize

SETS = {"au": "AU_Set", "expr": "EXPR_Set", "va": "VA_Set"}
SPLITS = {"Training_Set": "train", "Validation_Set": "val"}


def raw_labels(root: Path) -> dict:
    """(video, frame) -> (split, {task: label or None}) parsed independently of mtl.data.sources."""
    table: dict = {}
    for task, task_set in SETS.items():
        for split_dir, split in SPLITS.items():
            for path in sorted((root / "annotations" / task_set / split_dir).glob("*.txt")):
                for frame, line in enumerate(path.read_text().splitlines()[1:], start=1):
                    values = [float(v) for v in line.split(",")]
                    if task == "va":
                        label = None if -5 in values else values
                    elif task == "au":
                        label = None if -1 in values else [int(v) for v in values]
                    else:
                        label = None if values[0] == -1 else int(values[0])
                    entry = table.setdefault((path.stem, frame), (split, {t: None for t in SETS}))
                    entry[1][task] = label
    return table


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root / "raw", videos=10, frames=60, seed=3, image_size=48, progress=False)
    index = prepare({"affwild2": str(root / "raw")}, root / "shards", shard_size=50, image_size=48, progress=False)
    return root, index


def test_every_label_in_the_shards_equals_its_raw_annotation_line(synthetic):
    root, index = synthetic
    table = raw_labels(root / "raw")
    shards = load_index(root / "shards")
    seen = set()
    for split in ("train", "val"):
        for url in shards.shard_urls(split):
            for sample in wds.WebDataset(url, shardshuffle=False):
                labels = json.loads(sample["json"])
                raw_split, raw = table[(labels["video"], labels["frame"])]
                assert split == raw_split and sample["__key__"] == f"affwild2/{labels['video']}/{labels['frame']:05d}"
                assert labels["au"] == raw["au"] and labels["expr"] == raw["expr"]
                assert (labels["va"] is None and raw["va"] is None) or labels["va"] == pytest.approx(raw["va"])
                assert sample["jpg"] == (root / "raw/cropped_aligned" / labels["video"] /
                                         f"{labels['frame']:05d}.jpg").read_bytes()
                seen.add((labels["video"], labels["frame"]))
    has_image = {k for k in table if (root / "raw/cropped_aligned" / k[0] / f"{k[1]:05d}.jpg").is_file()}
    labelled = {k for k, (_, raw) in table.items() if any(v is not None for v in raw.values())}
    assert seen == has_image & labelled
    skipped = index["summary"]["skipped"]
    assert skipped.get("missing_image", 0) == len(labelled - has_image) > 0
    assert skipped.get("no_label", 0) == len(has_image - labelled)


def test_synthetic_labels_are_incomplete_in_training_and_complete_in_validation(synthetic):
    _, index = synthetic
    train, val = index["splits"]["train"]["stats"], index["splits"]["val"]["stats"]
    assert train["tasks_per_sample"][1] + train["tasks_per_sample"][2] > train["tasks_per_sample"][3]
    assert val["tasks_per_sample"][3] > 0.8 * val["samples"]
