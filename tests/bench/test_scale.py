"""`mtl bench scale`: the fit on known data, and the command at tiny sizes (structure and sanity, never speed)."""

import json

import pytest
from click.testing import CliRunner

from mtl.bench.scale import QUANTITIES, extrapolate, fit_rows, loglog_slope
from mtl.cli import main


def test_loglog_slope_recovers_known_power_laws():
    xs = [100, 300, 1000, 3000]
    assert loglog_slope(xs, [5 * x for x in xs]) == pytest.approx(1.0)
    assert loglog_slope(xs, [2 * x ** 1.5 for x in xs]) == pytest.approx(1.5)
    assert loglog_slope(xs, [7.0] * 4) == pytest.approx(0.0, abs=1e-12)
    assert extrapolate(xs, [3 * x ** 2 for x in xs], 10_000) == pytest.approx(3e8)
    with pytest.raises(ValueError):
        loglog_slope([10, 10], [1, 2])


def test_fit_rows_flag_only_costs_that_grow_faster_than_linearly():
    points = [{"frames": n, **{name: float(n) for name, _, _ in QUANTITIES}} for n in (100, 200, 400)]
    for point in points:
        point["index_bytes"] = point["frames"] ** 2  # a cost growing quadratically
        point["stream_samples_per_s"] = point["frames"] ** 2  # a rate: never flagged
    rows = {row["quantity"]: row for row in fit_rows(points, target=800)}
    assert rows["index_bytes"]["slope"] == pytest.approx(2.0) and rows["index_bytes"]["flag"]
    assert rows["index_bytes"]["at_target"] == pytest.approx(800 ** 2)
    assert not rows["stream_samples_per_s"]["flag"] and not rows["prepare_seconds"]["flag"]


def test_bench_scale_at_tiny_sizes_prints_slopes_and_the_extrapolation(tmp_path, ray_session):
    out = tmp_path / "table.json"
    result = CliRunner().invoke(main, ["bench", "scale", "--out", str(tmp_path / "b"), "--sizes", "200,400,800",
                                       "--image-size", "16", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "extrapolation to the Aff-Wild2" in result.output and "slope" in result.output
    table = json.loads(out.read_text())
    frames = [p["frames"] for p in table["points"]]
    assert frames == sorted(frames) and frames[0] < frames[-1]
    for point in table["points"]:
        for name in ("prepare_frames_per_s", "stream_samples_per_s", "soft_label_frames_per_s", "eval_frames_per_s",
                     "index_bytes", "driver_peak_rss_mb"):
            assert point[name] > 0, name
    for row in table["fits"]:
        if row["slope"] is not None:
            assert row["slope"] == pytest.approx(loglog_slope(frames, [p[row["quantity"]] for p in table["points"]]))
            assert row["quantity"] in result.output
    index_fit = next(row for row in table["fits"] if row["quantity"] == "index_bytes")
    assert 0 < index_fit["slope"] < 1.5  # the index lists shards and videos: at most about linear
