"""Against a real `mlflow server` on 127.0.0.1: log, read back, survive a server restart (one module-scoped server)."""
import json
import time

import pytest

pytest.importorskip("mlflow")

from mlflow import MlflowClient
from mlflow_server import MlflowServer

from spherewatch.alerts.alert import Alert
from spherewatch.sinks import MLflowSink, ResilientSink

U = "spherewatch/uniformity"
R = "spherewatch/effective_rank"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, mlflow_template_db):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), mlflow_template_db)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_resilient_mlflow_sink_survives_a_server_restart_without_loss_or_duplicates(
    mlflow_server, tmp_path, monkeypatch
):
    # The MLflow client's own retries would block the caller for minutes while the server is down.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = MlflowClient(mlflow_server.uri)
    inner = MLflowSink(mlflow_server.uri, experiment_name="served", run_name="restart-drill")
    errors = []
    spool = tmp_path / "mlflow.spool.jsonl"
    sink = ResilientSink(inner, spool_path=str(spool), on_error=lambda name, exc: errors.append((name, exc)),
                         retry_initial=0.05, retry_max=0.2)

    def values(step):
        return {U: -4.0 + step / 10, R: 128.0 - step}

    for step in range(5):
        sink.log_scalars(step, values(step))
    assert _history(client, inner.run_id, U) == [(s, pytest.approx(values(s)[U])) for s in range(5)]
    assert sink.healthy and errors == []

    mlflow_server.stop()
    for step in range(5, 15):
        started = time.monotonic()
        sink.log_scalars(step, values(step))
        assert time.monotonic() - started < 5.0  # the caller is not held up by the outage
    sink.log_histogram(14, "spherewatch/spectrum", [0.7, 0.2, 0.1])
    sink.log_alert(Alert(rule="uniformity_degradation", key=U, value=-2.6, step=14, severity="warning"))
    assert [name for name, _ in errors] == ["mlflow"]  # reported once for the whole outage
    assert sink.pending == 12 and not sink.healthy  # 10 scalars, the histogram and the alert, in order
    assert [json.loads(line)["op"] for line in spool.read_text().splitlines()] == ["scalars"] * 10 + [
        "histogram", "alert"]

    mlflow_server.start()  # same port, same store
    for step in range(15, 20):
        time.sleep(0.25)  # longer than retry_max: every call may retry
        sink.log_scalars(step, values(step))
    assert sink.pending == 0 and sink.healthy and not spool.exists()
    sink.close()
    assert len(errors) == 1

    for key in (U, R):
        history = _history(client, inner.run_id, key)
        assert [s for s, _ in history] == list(range(20)), key  # every point, once, in order
        assert [v for _, v in history] == pytest.approx([values(s)[key] for s in range(20)])
    run = client.get_run(inner.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["spherewatch.alert_state"] == "warning"
    assert _history(client, inner.run_id, "spherewatch/alerts/count") == [(0, 0.0), (14, 1.0)]  # 0 from the start
    with open(client.download_artifacts(inner.run_id, "spherewatch/alerts.json", str(tmp_path))) as f:
        assert [a["step"] for a in json.load(f)] == [14]
    with open(client.download_artifacts(inner.run_id, "spherewatch/spectra.json", str(tmp_path))) as f:
        assert json.load(f)["spherewatch/spectrum"]["values"] == [0.7, 0.2, 0.1]
