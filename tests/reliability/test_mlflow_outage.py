"""Fault row 1: the MLflow tracking server stops mid-run and comes back, seen through the Monitor.

One real ``mlflow server`` (SQLite store copied from a migrated template, one worker, no job runner) in its own process
group on 127.0.0.1, started once for the module. One test freezes it (SIGSTOP / SIGCONT: requests time out), the other
kills it and starts it again on the same port and store (connections refused). Both compare the server's run with a
clean run of the same training: every point once, the same values, every alert.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

pytest.importorskip("mlflow")

from mlflow_server import MlflowServer
from reliability._harness import TinyTrainer, assert_reported_once, evaluation_steps, scalar_steps

import spherewatch as sw

EVERY = 2
NAN_STEP = 14  # inside the outage: the non-finite alerts it fires must reach the server too

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, mlflow_template_db):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), mlflow_template_db)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _poison_at(nan_step):
    def poison(step, z1, z2):
        """A NaN row in the batch of ``nan_step``: the non-finite alert fires there."""
        if step == nan_step:
            z1 = z1.detach().clone()
            z1[0] = float("nan")
        return z1, z2
    return poison


_poison = _poison_at(NAN_STEP)


def _server_history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _assert_server_has_the_clean_run(client, run_id, make_monitor, steps, poison, fired):
    """The run on the server holds what a fault-free run logs: every point once, equal values, every alert."""
    clean = make_monitor(sinks=("memory",), every_n_steps=EVERY)
    TinyTrainer().run(clean, steps, embeddings=poison)
    memory = clean.sink("memory")
    assert len(memory.keys()) >= 8
    for key in memory.keys():
        expected = memory.history(key)
        assert scalar_steps(expected) == evaluation_steps(steps, EVERY), key
        got = _server_history(client, run_id, key)
        assert scalar_steps(got) == scalar_steps(expected), key  # no gap, no duplicate
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-9, nan_ok=True), key
    expected_alerts = [(a.rule, a.key, a.step) for a in memory.alerts]  # what a sink gets: fired and resolved events
    # on_alert gets only the alerts that fired, never a "resolved" event
    assert [(a.rule, a.key, a.step) for a in fired] == [(a.rule, a.key, a.step) for a in memory.alerts
                                                        if a.status == "fired"]
    count = _server_history(client, run_id, "spherewatch/alerts/count")
    assert [v for _, v in count] == [0.0] + [float(i + 1) for i in range(len(expected_alerts))]  # 0 from the start
    return expected_alerts


def test_a_frozen_mlflow_server_stalls_a_few_steps_by_the_request_timeout_and_loses_nothing(
    mlflow_server, make_monitor, spherewatch_logs, tmp_path, monkeypatch
):
    """SIGSTOP: connections are accepted but never answered, so each attempt waits for the HTTP timeout on the
    training thread (sinks write synchronously); the backoff keeps those stalls to a few. After SIGCONT the server
    may still process the timed-out requests: the replay must not duplicate their points."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    fired = []
    spool = tmp_path / "spool" / "mlflow-0.spool.jsonl"
    mon = make_monitor(sinks=("mlflow",), tracking_uri=mlflow_server.uri, every_n_steps=EVERY,
                       experiment_name="reliability", run_name="frozen", spool_dir=str(spool.parent),
                       on_alert=fired.append)
    poison = _poison_at(NAN_STEP)
    trainer = TinyTrainer().run(mon, range(0, 6), embeddings=poison)
    run_id = mon.sink("mlflow").run_id
    os.killpg(mlflow_server.proc.pid, signal.SIGSTOP)
    try:
        trainer.run(mon, range(6, 16), embeddings=poison)
    finally:
        os.killpg(mlflow_server.proc.pid, signal.SIGCONT)
    stalls = [t for t in trainer.step_seconds[6:16] if t > 0.5]
    assert 1 <= len(stalls) <= 3 and max(stalls) < 5.0, trainer.step_seconds[6:16]
    assert_reported_once(spherewatch_logs.records, fired, "sink:mlflow")
    assert spool.exists()
    step = 16
    while spool.exists() and step < 60:  # training goes on; the backlog leaves at the next retry (backoff <= 4 s)
        trainer.run(mon, [step], embeddings=poison)
        time.sleep(0.1)
        step += 1
    assert not spool.exists(), "the backlog was not delivered after the server came back"
    mon.close()
    assert trainer.steps_done == list(range(step))
    client = MlflowClient(mlflow_server.uri)
    alerts = _assert_server_has_the_clean_run(client, run_id, make_monitor, range(step), poison,
                                              [a for a in fired if a.rule != "monitor_fault"])
    assert ("nonfinite", "spherewatch/embeddings/uniformity", NAN_STEP) in alerts


def test_monitor_spools_points_while_the_mlflow_server_is_down_and_replays_them_once_after_recovery(
    mlflow_server, make_monitor, spherewatch_logs, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    # The MLflow client's own retries would hold each call for minutes while the server is down.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    fired = []
    spool = tmp_path / "spool" / "mlflow-0.spool.jsonl"
    common = dict(sinks=("mlflow",), tracking_uri=mlflow_server.uri, every_n_steps=EVERY,
                  experiment_name="reliability")
    mon = make_monitor(**common, run_name="outage", spool_dir=str(spool.parent), on_alert=fired.append)
    strict = make_monitor(**common, run_name="strict", spool_dir=str(tmp_path / "strict-spool"), strict=True)
    trainer, strict_trainer = TinyTrainer(), TinyTrainer()
    client = MlflowClient(mlflow_server.uri)
    uniformity = "spherewatch/embeddings/uniformity"

    trainer.run(mon, range(0, 10), embeddings=_poison)
    strict_trainer.run(strict, range(0, 10))
    run_id = mon.sink("mlflow").run_id
    assert scalar_steps(_server_history(client, run_id, uniformity)) == [0, 2, 4, 6, 8]

    mlflow_server.stop()
    trainer.run(mon, range(10, 20), embeddings=_poison)
    assert max(trainer.step_seconds[10:]) < 5.0  # connection refused, not retried: training is not held up
    assert_reported_once(spherewatch_logs.records, fired, "sink:mlflow")
    assert mon.faults["sink:mlflow"] == 1
    spooled = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [r["step"] for r in spooled if r["op"] == "scalars"] == evaluation_steps(range(10, 20), EVERY)
    assert any(r["op"] == "alert" and r["alert"]["rule"] == "nonfinite" for r in spooled)
    with pytest.raises(sw.SpherewatchError, match=r"spherewatch sink:mlflow failed: .*"):
        strict_trainer.run(strict, range(10, 11))  # step 10 is an evaluation: its write fails

    mlflow_server.start()  # same port, same store
    trainer.run(mon, range(20, 22), embeddings=_poison)
    assert not spool.exists(), "the backlog is delivered at the first evaluation after recovery"
    trainer.run(mon, range(22, 30), embeddings=_poison)
    mon.close()
    assert trainer.steps_done == list(range(30))
    assert_reported_once(spherewatch_logs.records, fired, "sink:mlflow")  # still once, for the whole outage

    expected_alerts = _assert_server_has_the_clean_run(client, run_id, make_monitor, range(30), _poison,
                                                       trainer.fired)
    assert ("nonfinite", "spherewatch/embeddings/uniformity", NAN_STEP) in expected_alerts
    with open(client.download_artifacts(run_id, "spherewatch/alerts.json", str(tmp_path))) as f:
        assert [(a["rule"], a["key"], a["step"]) for a in json.load(f)] == expected_alerts
    assert client.get_run(run_id).info.status == "FINISHED"
