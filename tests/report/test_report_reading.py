"""The report read as a person reads it (issue 19, point 7): the overview marks the first alert the banner names, a
threshold's label is never under a curve, the legend says "healthy" once, the step range matches the step axes."""
from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from spherewatch.alerts.alert import Alert
from spherewatch.report.figures import _display_path, first_alert, metrics_figure, overview_figure
from spherewatch.report.page import render_page
from spherewatch.report.run_verdict import verdict
from spherewatch.report.rundata import RunData

U, R, C = "spherewatch/uniformity", "spherewatch/effective_rank", "spherewatch/mean_cosine"
STEPS = list(range(10, 301, 10))


def _collapsing(name="simsiam-no-stopgrad", first=1) -> RunData:
    """Like the demo's collapsing run: uniformity rises through the -0.4 line early and stays above it (the stretch
    where the line's label used to sit under the curve); the first alert is on mean cosine, not in the overview."""
    steps = [first] + STEPS
    unif = [-2.6 + 2.45 * (1 - np.exp(-(s - first) / 12.0)) for s in steps]
    rank = [48.0 - 38.0 * (1 - np.exp(-(s - first) / 25.0)) for s in steps]
    cos = [0.3 + 0.66 * (1 - np.exp(-(s - first) / 12.0)) for s in steps]
    alerts = [
        Alert("mean_cosine_collapse", C, 0.90, 40, "warning", "mean_cosine fell into the collapse zone", 1.0),
        Alert("uniformity_collapse", U, -0.34, 50, "critical", "uniformity stays in the collapse zone", 2.0),
        Alert("effective_rank_degradation", R, 14.2, 90, "warning", "effective_rank fell", 3.0),
    ]
    scalars = {U: list(zip(steps, unif)), R: list(zip(steps, rank)), C: list(zip(steps, cos)),
               "train/loss": [(s, -0.99 + 0.9 * np.exp(-(s - first) / 8.0)) for s in steps]}
    return RunData("jsonl", f"{name}.jsonl", scalars, {}, alerts, name=name)


def _healthy(name="simsiam-healthy", first=1) -> RunData:
    steps = [first] + STEPS
    scalars = {U: [(s, -2.6 + 0.01 * np.sin(s)) for s in steps], R: [(s, 33.0 + np.cos(s)) for s in steps],
               C: [(s, 0.11) for s in steps], "train/loss": [(s, -0.93 + 0.9 * np.exp(-s / 40.0)) for s in steps]}
    return RunData("jsonl", f"{name}.jsonl", scalars, {}, [], name=name)


def _banner_step(data: RunData) -> int:
    return int(re.match(r"collapse detected at step (\d+)", verdict(data)).group(1))


def test_the_overview_marks_the_first_alert_the_banner_names_on_every_panel_though_its_metric_is_not_drawn(tmp_path):
    runs = [_healthy(), _collapsing()]
    fig = overview_figure(runs, str(tmp_path / "overview.png"))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["uniformity", "effective rank", "training loss (host)"]  # no mean cosine panel
    banner = _banner_step(runs[1])
    assert banner == 40 == first_alert(runs[1]).step
    for ax in fig.axes:
        marks = [line for line in ax.get_lines() if line.get_gid() == "first-alert"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [banner, banner], ax.get_title()
        assert marks[0].get_color() == "#ff8c00"  # the warning's colour: the first alert was a warning
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "simsiam-no-stopgrad: first alert at step 40, mean cosine (warning)" in legend
    # a healthy run alone: nothing marked
    fig = overview_figure([_healthy()], str(tmp_path / "healthy.png"))
    assert not [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == "first-alert"]


def test_the_real_runs_overview_marks_the_step_its_banner_names(monitored_run, tmp_path):
    from spherewatch.report import load_run

    data = load_run(str(monitored_run.jsonl))
    fig = overview_figure([data], str(tmp_path / "overview.png"))
    marks = {float(line.get_xdata()[0]) for ax in fig.axes for line in ax.get_lines() if line.get_gid() == "first-alert"}
    assert marks == {float(_banner_step(data))} == {float(min(a.step for a in monitored_run.alerts))}


def _labels_and_curves(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        curves = [line for line in ax.get_lines() if line.get_gid() is None]
        labels = [t for t in ax.texts if t.get_gid() == "threshold"]
        for label in labels:
            yield ax, label, label.get_window_extent(renderer), curves


def test_a_thresholds_label_is_never_under_a_curve(tmp_path):
    runs = [_healthy(), _collapsing()]
    checked = 0
    for fig in (overview_figure(runs, str(tmp_path / "o.png")), metrics_figure(runs, "spherewatch",
                                                                               str(tmp_path / "m.png"))):
        for ax, label, box, curves in _labels_and_curves(fig):
            points = np.concatenate([_display_path(c) for c in curves])
            inside = (points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (
                points[:, 1] <= box.y1)
            assert not inside.any(), (ax.get_title(), label.get_text(), points[inside][:3])
            assert label.get_zorder() > max(c.get_zorder() for c in curves)  # and drawn over them, on a white box
            assert label.get_bbox_patch() is not None and label.get_bbox_patch().get_facecolor()[:3] == (1, 1, 1)
            checked += 1
    assert checked >= 2  # "alert above -0.4" on uniformity at least, in both figures


def test_the_legend_says_healthy_once_and_the_page_banner_still_does(tmp_path):
    runs = [_healthy(), _collapsing()]
    fig = overview_figure(runs, str(tmp_path / "overview.png"))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "simsiam-healthy: no alerts in 300 steps" in legend
    assert sum(text.count("healthy") for text in legend) == 1  # the run's own name
    assert "simsiam-no-stopgrad: collapse detected at step 40, critical at step 50" in legend
    page = render_page(runs, [], "spherewatch")
    assert "simsiam-healthy: healthy: no alerts in 300 steps" in page  # the banner keeps the verdict's words


@pytest.mark.parametrize("first", [0, 1])
def test_the_step_range_on_the_page_is_the_step_axis_of_the_charts(tmp_path, first):
    runs = [_healthy(first=first), _collapsing(first=first)]
    page = render_page(runs, [], "spherewatch")
    spans = re.findall(r"steps (\d+)–(\d+)", page)
    assert spans == [(str(first), "300")] * 2
    fig = overview_figure(runs, str(tmp_path / "overview.png"))
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = list(ax.get_xticks())
        assert ticks[0] == first and ticks[-1] == 300, ticks  # the axis is labelled with the range's ends
        assert first - 4 < lo < first and 300 < hi < 304, (lo, hi)  # and starts there (a point's width of room)
    # the host's loss logged from step 0 while the metrics start at 1: both say 0
    run = _collapsing(first=1)
    run.scalars["train/loss"] = [(0, 1.0)] + run.scalars["train/loss"]
    assert "steps 0–300" in render_page([run], [], "spherewatch")
    fig = overview_figure([run], str(tmp_path / "loss0.png"))
    assert all(ax.get_xticks()[0] == 0 for ax in fig.axes)
    metrics_figure([run], "spherewatch", str(tmp_path / "metrics.png"))  # the same axis code, no error
