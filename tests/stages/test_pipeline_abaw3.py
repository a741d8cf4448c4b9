"""The ABAW3+ protocol end to end on tiny data: the pipeline under `data.protocol=abaw3` (teacher, soft labels,
students on Ray Tune, ensemble, report by P_MTL: a cell of the session's `tiny_grid`, synthetic s-Aff-Wild2) ->
`mtl predict --submission` on faces that `mtl prepare --s-affwild2` reads; and shards of one protocol refused by a
config of the other."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mtl.cli import main
from mtl.config import load_config
from mtl.data.synth.generator import synthesize
from mtl.labels import ABAW3
from mtl.errors import DataError
from tests.conftest import PIPELINE_TINY as TINY


@pytest.fixture(scope="module")
def abaw3_shards(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("abaw3")
    synthesize(root / "raw", videos=12, frames=10, seed=3, image_size=24, progress=False, protocol="abaw3")
    result = CliRunner().invoke(main, ["prepare", "--s-affwild2", str(root / "raw"), "--out", str(root / "shards"),
                                       "--image-size", "20", "--shard-size", "16"])
    assert result.exit_code == 0, result.output
    assert "protocol abaw3" in result.output
    return root


def test_the_abaw3_pipeline_scores_by_p_mtl_and_writes_a_submission(tmp_path, abaw3_shards, tiny_grid):
    grid, _ = tiny_grid
    run = Path(grid.out) / "cells" / "base" / "abaw3-harsh-s0"
    report = json.loads((run / "report.json").read_text())
    assert (report["protocol"], report["metric"], report["config"]["data"]["protocol"]) == ("abaw3",) * 3
    for entry in (report["teacher"], *report["students"], report["ensemble"]):
        if entry["total"] is not None:  # P_MTL = AU F1 + EXPR F1 + VA CCC, each task where it has labels
            terms = [entry[t] for t in ("au", "expr", "va") if entry[t] is not None]
            assert entry["total"] == pytest.approx(sum(terms))
    assert "P_MTL" in (run / "report.md").read_text()
    frames = sorted(p.relative_to(abaw3_shards / "raw" / "cropped_aligned").as_posix()
                    for p in (abaw3_shards / "raw" / "cropped_aligned").rglob("*.jpg"))[:9]
    (tmp_path / "test_list.txt").write_text("image\n" + "\n".join(reversed(frames)) + "\n")
    result = CliRunner().invoke(main, ["predict", "--model", str(run / "ensemble" / "ensemble.pt2"),
                                       "--images", str(abaw3_shards / "raw" / "cropped_aligned"),
                                       "--out", str(tmp_path / "pred"), "--protocol", "abaw3",
                                       "--submission", str(tmp_path / "sub.txt"),
                                       "--test-list", str(tmp_path / "test_list.txt")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "sub.txt").read_text().splitlines()
    assert lines[0] == "image,valence,arousal,expression,aus"
    assert [line.split(",")[0] for line in lines[1:]] == list(reversed(frames))
    for line in lines[1:]:
        fields = line.split(",")
        assert len(fields) == 4 + ABAW3.num_au and int(fields[3]) in range(8)
        assert {int(v) for v in fields[4:]} <= {0, 1} and all(-1 <= float(v) <= 1 for v in fields[1:3])


def test_shards_of_one_protocol_are_refused_by_a_config_of_the_other(tmp_path, abaw3_shards):
    from mtl.train.driver import train

    cfg = load_config("demo", (f"run.dir={tmp_path}", f"data.shards={abaw3_shards / 'shards'}", *TINY))
    with pytest.raises(DataError, match="hold protocol abaw3 labels, but data.protocol is abaw2020"):
        train(cfg)
    assert not (tmp_path / "teacher").exists()  # refused before anything ran
