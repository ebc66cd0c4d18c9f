import json
import math

import numpy as np
import pytest

pytest.importorskip("mlflow")

import mlflow
from mlflow import MlflowClient

from spherewatch.alerts.alert import Alert
from spherewatch.sinks import MLflowSink, ResilientSink

U = "spherewatch/uniformity"
R = "spherewatch/encoder/effective_rank"


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifact_json(client, run_id, path, tmp_path):
    local = client.download_artifacts(run_id, path, str(tmp_path / "download"))
    with open(local) as f:
        return json.load(f)


def test_new_run_is_created_logged_to_and_terminated_on_close(mlflow_uri, artifact_dir, tmp_path):
    sink = MLflowSink(mlflow_uri, experiment_name="exp-new", run_name="probe", tags={"team": "ssl"},
                      artifact_location=str(artifact_dir))
    client = MlflowClient(mlflow_uri)
    assert client.get_run(sink.run_id).info.status == "RUNNING"
    for step in (0, 10, 20):
        sink.log_scalars(step, {U: -3.5 + step / 10, R: 120.0 - step})
    sink.log_histogram(10, "spherewatch/spectrum", np.array([0.6, 0.4]))
    sink.log_histogram(20, "spherewatch/spectrum", np.array([0.9, 0.1, np.inf]))
    sink.close()
    sink.close()

    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "probe" and run.data.tags["team"] == "ssl"
    assert client.get_experiment(run.info.experiment_id).name == "exp-new"
    assert _history(client, sink.run_id, U) == [(0, -3.5), (10, -2.5), (20, -1.5)]  # "/" in keys is fine
    assert _history(client, sink.run_id, R) == [(0, 120.0), (10, 110.0), (20, 100.0)]
    spectra = _artifact_json(client, sink.run_id, "spherewatch/spectra.json", tmp_path)
    assert spectra["spherewatch/spectrum"]["step"] == 20  # the latest spectrum per key
    assert spectra["spherewatch/spectrum"]["values"] == [0.9, 0.1, "Infinity"]


def test_explicit_run_id_is_used_and_left_open(mlflow_uri, artifact_dir):
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("exp-explicit", artifact_location=str(artifact_dir))
    run = client.create_run(experiment_id)
    sink = MLflowSink(mlflow_uri, run_id=run.info.run_id)
    sink.log_scalars(5, {U: -2.0, R: float("nan")})
    sink.close()
    assert sink.run_id == run.info.run_id and not sink.created_run
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # the owner ends it
    assert _history(client, run.info.run_id, U) == [(5, -2.0)]
    ((step, value),) = _history(client, run.info.run_id, R)
    assert step == 5 and math.isnan(value)
    assert len(client.search_runs([experiment_id])) == 1


def test_active_run_is_reused_and_no_second_run_is_opened(mlflow_uri, artifact_dir, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("exp-active", artifact_location=str(artifact_dir))
    with mlflow.start_run(experiment_id=experiment_id) as active:
        sink = MLflowSink(mlflow_uri, experiment_name="would-be-new")
        assert "ignoring tracking_uri" not in caplog.text  # same store: nothing to warn about
        assert sink.run_id == active.info.run_id and not sink.created_run
        sink.log_scalars(1, {U: -3.0})
        sink.close()
        assert mlflow.active_run().info.run_id == active.info.run_id
        assert client.get_run(active.info.run_id).info.status == "RUNNING"
    assert len(client.search_runs([experiment_id])) == 1
    assert client.get_experiment_by_name("would-be-new") is None
    assert _history(client, active.info.run_id, U) == [(1, -3.0)]


def test_alerts_set_state_tag_count_metric_and_json_artifact(mlflow_uri, artifact_dir, tmp_path):
    sink = MLflowSink(mlflow_uri, experiment_name="exp-alerts", artifact_location=str(artifact_dir))
    first = Alert(rule="uniformity_degradation", key=U, value=-1.2, step=30, severity="warning", time=1000.0)
    second = Alert(rule="nonfinite", key=R, value=float("nan"), step=40, severity="critical", time=1001.0)
    sink.log_alert(first)
    sink.log_alert(second)
    sink.log_alert(second)  # a replay after a transient failure must not count twice
    sink.flush()  # alerts.json is written by flush (at most once per artifact_interval) and close, not per alert
    client = MlflowClient(mlflow_uri)
    run = client.get_run(sink.run_id)
    assert run.data.tags["spherewatch.alert_state"] == "critical"
    assert _history(client, sink.run_id, "spherewatch/alerts/count") == [(30, 1.0), (40, 2.0)]
    alerts = _artifact_json(client, sink.run_id, "spherewatch/alerts.json", tmp_path)
    assert [a["rule"] for a in alerts] == ["uniformity_degradation", "nonfinite"]
    assert alerts[1]["value"] == "NaN" and alerts[1]["step"] == 40
    sink.close()


def test_replayed_scalars_with_the_same_wall_time_add_no_duplicate_points(mlflow_uri, artifact_dir):
    sink = MLflowSink(mlflow_uri, experiment_name="exp-dupes", artifact_location=str(artifact_dir))
    sink.log_scalars(7, {U: -3.3}, wall_time=1700000000.25)
    sink.log_scalars(7, {U: -3.3}, wall_time=1700000000.25)  # e.g. the response of the first call was lost
    client = MlflowClient(mlflow_uri)
    (point,) = client.get_metric_history(sink.run_id, U)
    assert (point.step, point.value, point.timestamp) == (7, -3.3, 1700000000250)
    sink.close()


def test_invalid_metric_key_is_a_permanent_error_that_resilient_sink_drops(mlflow_uri, artifact_dir):
    inner = MLflowSink(mlflow_uri, experiment_name="exp-bad-key", artifact_location=str(artifact_dir))
    errors = []
    sink = ResilientSink(inner, on_error=lambda name, exc: errors.append((name, exc)))
    sink.log_scalars(1, {"spherewatch/uniformity?": -3.0})  # "?" is not allowed in MLflow keys
    sink.log_scalars(2, {U: -2.9})
    assert sink.dropped == 1 and sink.pending == 0 and sink.healthy
    assert [name for name, _ in errors] == ["mlflow"]
    assert _history(MlflowClient(mlflow_uri), inner.run_id, U) == [(2, -2.9)]
    sink.close()


def test_deleted_experiment_is_reported_with_the_fix(mlflow_uri, artifact_dir):
    client = MlflowClient(mlflow_uri)
    client.delete_experiment(client.create_experiment("exp-gone", artifact_location=str(artifact_dir)))
    with pytest.raises(ValueError, match="exp-gone.*deleted.*mlflow experiments restore"):
        MLflowSink(mlflow_uri, experiment_name="exp-gone")


def test_flush_writes_spectra_at_most_once_per_interval_and_close_writes_the_latest(
    mlflow_uri, artifact_dir, tmp_path
):
    sink = MLflowSink(mlflow_uri, experiment_name="exp-spectra", artifact_location=str(artifact_dir),
                      artifact_interval=3600.0)
    client = MlflowClient(mlflow_uri)
    key = "spherewatch/spectrum"
    sink.log_histogram(1, key, [0.5, 0.5])
    sink.flush()
    assert _artifact_json(client, sink.run_id, "spherewatch/spectra.json", tmp_path / "a")[key]["step"] == 1
    sink.log_histogram(2, key, [0.9, 0.1])
    sink.flush()  # within the interval: not rewritten (the Monitor flushes every sampling step)
    assert _artifact_json(client, sink.run_id, "spherewatch/spectra.json", tmp_path / "b")[key]["step"] == 1
    sink.close()
    assert _artifact_json(client, sink.run_id, "spherewatch/spectra.json", tmp_path / "c")[key]["step"] == 2


def test_alerts_json_is_not_rewritten_with_every_alert(mlflow_uri, artifact_dir, tmp_path):
    sink = MLflowSink(mlflow_uri, experiment_name="exp-many-alerts", artifact_location=str(artifact_dir),
                      artifact_interval=3600.0)
    uploads = []
    real = sink.client.log_text
    sink.client.log_text = lambda *a, **k: (uploads.append(a[-1]), real(*a, **k))
    for step in range(50):
        sink.log_alert(Alert(rule="nonfinite", key=U, value=float("nan"), step=step, severity="critical"))
        sink.flush()
    assert uploads == ["spherewatch/alerts.json"]  # the first flush, then nothing within the interval
    sink.close()
    assert uploads == ["spherewatch/alerts.json"] * 2
    alerts = _artifact_json(MlflowClient(mlflow_uri), sink.run_id, "spherewatch/alerts.json", tmp_path)
    assert [a["step"] for a in alerts] == list(range(50))
