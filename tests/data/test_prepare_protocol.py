"""`mtl prepare` under a label protocol: index.json records it, readers are told it, sources it lacks are refused."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import write_affwild2
from tests.data.sources.test_affwild2_abaw3 import AU12, write_challenges
from tests.data.sources.test_s_affwild2 import AU_NONE, label, write_s_affwild2
from tests.data.test_prepare import read_shards
from mtl.cli import main
from mtl.errors import ConfigError
from mtl.data.prepare import format_summary, prepare
from mtl.data.sources import disfa
from mtl.errors import DataError

PARTIAL = "0,1,-1,-1,0,0,0,0,0,0,1,-1"


def s_release(root: Path) -> Path:
    """Train video t (frame 2 without an image, frame 3 without a label), two-person val videos p_left, p_right."""
    return write_s_affwild2(root, {
        "train": {"t": [label(expr="7"), label(expr="1"), label(va="-5,-5", expr="-1", au=AU_NONE),
                        label(va="-5,0.1", expr="-1", au=PARTIAL)]},
        "val": {"p_left": [label(expr="0")], "p_right": [label(expr="7", au=AU_NONE)]}}, missing=[("t", 2)])


def test_s_affwild2_shards_hold_its_labels_and_record_the_protocol(tmp_path, ray_session):
    index = prepare({"s_affwild2": str(s_release(tmp_path / "raw"))}, tmp_path / "shards", image_size=16,
                    progress=False, protocol="abaw3")
    assert json.loads((tmp_path / "shards/index.json").read_text())["protocol"] == "abaw3" == index["protocol"]
    train, val = read_shards(tmp_path / "shards", "train"), read_shards(tmp_path / "shards", "val")
    assert sorted(train) == ["s_affwild2/t/00001", "s_affwild2/t/00004"]
    assert sorted(val) == ["s_affwild2/p_left/00001", "s_affwild2/p_right/00001"]  # validation videos only in val
    assert train["s_affwild2/t/00001"][0] == {"source": "s_affwild2", "video": "t", "frame": 1,
                                              "au": [1] + [0] * 11, "expr": 7, "va": [0.5, -0.25]}  # 7: Other
    assert train["s_affwild2/t/00004"][0]["au"] == [0, 1, -1, -1, 0, 0, 0, 0, 0, 0, 1, -1]
    assert train["s_affwild2/t/00004"][0]["va"] is None and train["s_affwild2/t/00004"][0]["expr"] is None
    assert val["s_affwild2/p_right/00001"][0]["au"] is None and val["s_affwild2/p_right/00001"][0]["expr"] == 7
    summary = index["summary"]
    assert summary["skipped"] == {"missing_image": 1, "no_label": 1}
    assert {e["key"] for e in summary["skip_examples"]} == {"s_affwild2/t/00002", "s_affwild2/t/00003"}
    assert summary["samples_per_source"] == {"s_affwild2": {"train": 2, "val": 2}}
    assert index["splits"]["train"]["stats"]["expr"]["counts"] == [0, 0, 0, 0, 0, 0, 0, 1]  # 8 classes
    assert "protocol abaw3: 12 AUs, 8 expression classes" in format_summary(index)


def test_images_elsewhere_are_recorded_in_the_summary(tmp_path, ray_session):
    write_s_affwild2(tmp_path / "ann", {"train": {"t": [label()]}}, images=tmp_path / "faces")
    index = prepare({"s_affwild2": str(tmp_path / "ann")}, tmp_path / "shards", image_size=16, progress=False,
                    protocol="abaw3", images={"s_affwild2": str(tmp_path / "faces")})
    assert index["summary"]["images"] == {"s_affwild2": str(tmp_path / "faces")}
    assert index["summary"]["samples_per_source"] == {"s_affwild2": {"train": 1, "val": 0}}
    with pytest.raises(ConfigError, match="image folder given for source expw, which is not being prepared"):
        prepare({"s_affwild2": str(tmp_path / "ann")}, tmp_path / "x", protocol="abaw3", images={"expw": "faces"})
    with pytest.raises(ConfigError, match="source affwild2 takes no images option"):
        prepare({"affwild2": str(tmp_path / "ann")}, tmp_path / "x", images={"affwild2": "faces"})


def test_s_affwild2_under_abaw2020_is_refused_in_one_line(tmp_path):
    raw = s_release(tmp_path / "raw")
    with pytest.raises(DataError, match=r"^source s_affwild2 \(--s-affwild2\) exists only under protocol abaw3, "
                                        r"not under abaw2020$"):
        prepare({"s_affwild2": str(raw)}, tmp_path / "shards", progress=False)
    assert not (tmp_path / "shards").exists()


def test_abaw2020_index_only_gains_the_protocol_key(tmp_path, ray_session):
    raw = write_affwild2(tmp_path / "raw", {"v": {"frames": 2, "expr": ["1", "6"]}})
    index = prepare({"affwild2": str(raw)}, tmp_path / "shards", image_size=16, progress=False)
    assert list(index) == ["schema", "protocol", "splits", "summary", "image_size"]
    assert index["protocol"] == "abaw2020" and "images" not in index["summary"]
    assert "protocol abaw2020: 8 AUs, 7 expression classes" in format_summary(index)
    assert len(index["splits"]["train"]["stats"]["expr"]["counts"]) == 7


def test_per_task_release_and_disfa_under_abaw3(tmp_path, ray_session):
    from tests.data.sources.test_disfa import write_images, write_labels

    raw = write_challenges(tmp_path / "aff", {"v": {"frames": 1, "au": [AU12], "expr": ["7"]}})
    write_labels(tmp_path / "disfa", "SN001")
    (tmp_path / "disfa/ActionUnit_Labels/SN001/SN001_au26.txt").write_text("1,3\n2,0\n3,1\n")
    write_images(tmp_path / "disfa", "SN001", [f"frame_det_00_{f:06d}.bmp" for f in (1, 2, 3)])
    index = prepare({"affwild2": str(raw), "disfa": str(tmp_path / "disfa")}, tmp_path / "shards", image_size=16,
                    progress=False, protocol="abaw3")
    train = read_shards(tmp_path / "shards", "train")
    assert train["affwild2/v/00001"][0]["au"] == [1] + [0] * 10 + [1] and train["affwild2/v/00001"][0]["expr"] == 7
    # DISFA under abaw3: AU1 2 4 6 12 15 25 26 from its files (intensity >= 2), AU7 AU10 AU23 AU24 unlabelled
    assert train["disfa/SN001/00001"][0]["au"] == [0, 1, 0, 1, -1, -1, 1, 0, -1, -1, 1, 1]
    assert train["disfa/SN001/00002"][0]["au"] == [0, 0, 0, 1, -1, -1, 0, 0, -1, -1, 1, 0]
    assert index["protocol"] == "abaw3"


def test_disfa_needs_only_the_files_of_the_protocols_aus(tmp_path):
    from tests.data.sources.test_disfa import write_images, write_labels

    write_labels(tmp_path, "SN001")
    write_images(tmp_path, "SN001", [])
    with pytest.raises(DataError, match="SN001_au26.txt: missing file"):
        disfa.discover(tmp_path, protocol="abaw3")
    (tmp_path / "ActionUnit_Labels/SN001/SN001_au20.txt").unlink()  # AU20 is not an abaw3 AU
    (tmp_path / "ActionUnit_Labels/SN001/SN001_au26.txt").write_text("1,0\n2,5\n3,0\n")
    got = [r.au for unit in disfa.discover(tmp_path, protocol="abaw3") for r in disfa.read(unit)]
    assert [tuple(i for i, v in enumerate(au) if v == -1) for au in got] == [(4, 5, 8, 9)] * 3
    assert [au[11] for au in got] == [0, 1, 0]


def test_expw_and_afew_va_read_the_same_under_abaw3(tmp_path, ray_session):
    from tests.data.sources.test_afew_va import entry, make_clip
    from tests.data.sources.test_expw import make_expw

    sources = {"expw": str(make_expw(tmp_path / "expw")), "afew_va": str(tmp_path / "afew")}
    make_clip(tmp_path / "afew", "01", "001", {"00000": entry(5, -10)})
    old = prepare(sources, tmp_path / "old", image_size=16, progress=False)
    new = prepare(sources, tmp_path / "new", image_size=16, progress=False, protocol="abaw3")
    assert read_shards(tmp_path / "old", "train") == read_shards(tmp_path / "new", "train")
    assert new["splits"]["train"]["stats"]["expr"]["counts"][7] == 0  # never Other
    assert new["splits"]["train"]["stats"]["expr"]["counts"][:7] == old["splits"]["train"]["stats"]["expr"]["counts"]


def invoke(*args):
    return CliRunner().invoke(main, ["prepare", *map(str, args)])


def test_cli_detects_the_protocol_and_refuses_a_mismatch(tmp_path, ray_session):
    s_raw, old = s_release(tmp_path / "s"), write_affwild2(tmp_path / "old", {"v": {"frames": 1, "expr": ["1"]}})
    result = invoke("--s-affwild2", s_raw, "--protocol", "abaw2020", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert f"--protocol abaw2020, but --s-affwild2 {s_raw} holds abaw3 labels" in result.output
    result = invoke("--s-affwild2", s_raw, "--affwild2", old, "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert f"--affwild2 {old} holds abaw2020 labels, but --s-affwild2 {s_raw} holds abaw3 labels" in result.output
    result = invoke("--expw", tmp_path, "--images", tmp_path, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--images is the image folder of --s-affwild2, which is not given" in result.output
    new = write_challenges(tmp_path / "new", {"v": {"frames": 1, "au": [AU12]}})
    result = invoke("--affwild2", new, "--out", tmp_path / "shards", "--image-size", "16")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "shards/index.json").read_text())["protocol"] == "abaw3"
    assert "protocol abaw3: 12 AUs, 8 expression classes" in result.output
    result = invoke("--s-affwild2", s_raw, "--out", tmp_path / "s_shards", "--image-size", "16")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s_shards/index.json").read_text())["protocol"] == "abaw3"


def test_synth_passes_the_protocol_through(tmp_path, monkeypatch):
    import mtl.data.synth.generator as generator

    calls = []
    monkeypatch.setattr(generator, "synthesize", lambda out, **kwargs: calls.append(kwargs) or {"videos": 1})
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "d"), "--protocol", "abaw3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert [c["protocol"] for c in calls] == ["abaw3", "abaw2020"]
