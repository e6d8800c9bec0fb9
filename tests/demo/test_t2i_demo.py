"""``drorae demo --t2i --quick``: the whole text-to-image comparison runs and reports what the full run reports."""

import json

from drorae.data.shapes import TAGS
from drorae.demo.t2i import ROWS, T2IDemoPlan, run_t2i_demo


def test_quick_t2i_demo_reports_ceiling_scores_and_margins(tmp_path):
    report = run_t2i_demo(tmp_path, T2IDemoPlan.quick_plan(), seeds=2)
    out = tmp_path / "t2i"
    assert report["ceiling"]["ground truth"]["overall"] == 1.0  # the scorer is right on its own images
    assert set(report["ceiling"]) == {"ground truth", *ROWS}
    assert set(report["summary"]) == set(ROWS) and set(report["margins"]) == {*TAGS, "overall"}
    for seed in range(2):
        assert report["per_seed"][seed]["rae"].keys() == {*TAGS, "overall"}
        assert (out / f"grid_drorae_seed{seed}.png").is_file()
    assert json.loads((out / "report.json").read_text())["seeds"] == 2
    assert "DRoRAE - RAE (paired)" in (out / "report.md").read_text()
