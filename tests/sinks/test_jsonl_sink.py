import json
import math
import os
import stat

import numpy as np
import pytest

from spherewatch.alerts.alert import Alert
from spherewatch.errors import SpherewatchError
from spherewatch.sinks import JsonlSink, read_jsonl

U = "spherewatch/uniformity"
R = "spherewatch/effective_rank"


def _strict_json(line):
    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=reject)


def test_round_trip_keeps_values_steps_and_non_finite_floats(tmp_path):
    path = tmp_path / "run.jsonl"
    alert = Alert(rule="nonfinite", key=U, value=float("nan"), step=20, severity="critical", message="NaN")
    with JsonlSink(str(path)) as sink:
        sink.log_scalars(0, {U: -3.5, R: 120.25})
        sink.log_scalars(10, {U: float("nan"), R: float("inf")})
        sink.log_scalars(20, {U: float("-inf")})
        sink.log_histogram(10, "spherewatch/spectrum", np.array([0.5, 0.25, float("inf"), 0.0]))
        sink.log_alert(alert)

    lines = path.read_text().splitlines()
    records = [_strict_json(line) for line in lines]  # every line is standard JSON
    assert [r["type"] for r in records] == ["scalars", "scalars", "scalars", "histogram", "alert"]
    assert records[1]["values"] == {U: "NaN", R: "Infinity"}
    assert records[4]["value"] == "NaN" and records[4]["rule"] == "nonfinite"

    data = read_jsonl(path)
    assert data["scalars"][U][0] == (0, -3.5)
    assert data["scalars"][U][1][0] == 10 and math.isnan(data["scalars"][U][1][1])
    assert data["scalars"][U][2] == (20, -math.inf)
    assert data["scalars"][R] == [(0, 120.25), (10, math.inf)]
    (step, spectrum), = data["histograms"]["spherewatch/spectrum"]
    assert step == 10 and spectrum.dtype == np.float64
    np.testing.assert_array_equal(spectrum, [0.5, 0.25, np.inf, 0.0])
    (back,) = data["alerts"]
    assert isinstance(back, Alert) and math.isnan(back.value)
    assert (back.rule, back.key, back.step, back.severity, back.message, back.time) == (
        alert.rule, alert.key, alert.step, alert.severity, alert.message, alert.time)


def test_file_and_parent_folders_are_not_world_writable_even_with_umask_zero(tmp_path):
    path = tmp_path / "new" / "deeper" / "run.jsonl"
    old = os.umask(0)
    try:
        sink = JsonlSink(path)
    finally:
        os.umask(old)
    sink.close()
    for p in (path, path.parent, path.parent.parent):
        assert not os.stat(p).st_mode & stat.S_IWOTH, oct(os.stat(p).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_two_sink_instances_append_to_the_same_file(tmp_path):
    path = tmp_path / "run.jsonl"
    with JsonlSink(path) as first:
        first.log_scalars(0, {U: -3.9})
    with JsonlSink(path) as resumed:
        resumed.log_scalars(10, {U: -3.7})
    assert read_jsonl(path)["scalars"][U] == [(0, -3.9), (10, -3.7)]


def test_wall_time_is_written_as_given(tmp_path):
    path = tmp_path / "run.jsonl"
    with JsonlSink(path) as sink:
        sink.log_scalars(3, {U: -1.0}, wall_time=1234.5)
    assert _strict_json(path.read_text())["time"] == 1234.5


def test_reader_skips_a_truncated_last_line(tmp_path, caplog):
    path = tmp_path / "run.jsonl"
    with JsonlSink(path) as sink:
        sink.log_scalars(0, {U: -3.9})
    with open(path, "a") as f:
        f.write('{"type": "scalars", "step": 10, "val')  # writer killed mid-line
    assert read_jsonl(path)["scalars"][U] == [(0, -3.9)]
    assert "skipped 1 malformed line" in caplog.text


def test_close_is_idempotent_and_logging_after_close_raises(tmp_path):
    sink = JsonlSink(tmp_path / "run.jsonl")
    sink.close()
    sink.close()
    with pytest.raises(SpherewatchError, match="closed"):
        sink.log_scalars(0, {U: 1.0})


def test_a_non_numeric_value_writes_nothing_and_raises(tmp_path):
    path = tmp_path / "run.jsonl"
    with JsonlSink(path) as sink:
        with pytest.raises((TypeError, ValueError)):
            sink.log_scalars(0, {U: "high"})
        sink.log_scalars(1, {U: 2.0})
    assert read_jsonl(path)["scalars"][U] == [(1, 2.0)]
