"""Fault row 1: the MLflow tracking server is not up when the run starts, freezes, or is killed and restarted.

One real ``mlflow server`` (SQLite store copied from a migrated template, one worker, no job runner) in its own process
group on 127.0.0.1, on a port chosen up front and started only AFTER the first run began. The sinks are written on
the monitor's writer thread, so these tests assert delivery and order — every point once, in step order, in the run
it belongs to — and never wall time. MLflow's own HTTP retries are lowered only to keep the tests short: with the
defaults the writer thread waits longer, the training thread does not.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow_server import MlflowServer
from reliability._harness import TinyTrainer, assert_reported_once, evaluation_steps, scalar_steps

import spherewatch as sw

EVERY = 2
NAN_STEP = 14  # inside the outage: the non-finite alerts it fires must reach the server too

pytestmark = pytest.mark.timeout(400)


class _LazyServer(MlflowServer):
    def ensure_started(self):
        if self.proc is None:
            self.start()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, mlflow_template_db):
    """A server whose URI is known at once but which answers only once a test called ``ensure_started()``."""
    server = _LazyServer(tmp_path_factory.mktemp("mlflow-server"), mlflow_template_db)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def short_mlflow_retries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


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


def _spool_files(spool_dir):
    return sorted(Path(spool_dir).glob("*/*.spool.jsonl"))


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
    # 0 from the start, then one more per fired collapse alert (resolutions and monitor faults are not counted)
    n_fired = sum(a.status == "fired" and a.kind != "fault" for a in memory.alerts)
    assert [v for _, v in count] == [0.0] + [float(i + 1) for i in range(n_fired)]
    return expected_alerts


def _run_id(mon):
    """The run the monitor's MLflow sink logs to (known once the sink could open)."""
    mon.flush()
    return mon.sink("mlflow").run_id


def test_a_server_that_comes_up_after_the_run_began_gets_every_point_once_in_order_in_its_run(
    mlflow_server, make_monitor, spherewatch_logs, tmp_path
):
    from mlflow import MlflowClient

    assert mlflow_server.proc is None, "this test needs the server down at start (it runs first in this module)"
    fired = []
    spool_dir = tmp_path / "spool"
    mon = make_monitor(sinks=("mlflow",), tracking_uri=mlflow_server.uri, every_n_steps=EVERY,
                       experiment_name="reliability", run_name="late-server", spool_dir=str(spool_dir),
                       on_alert=fired.append)
    trainer = TinyTrainer().run(mon, range(0, 20), embeddings=_poison)
    assert trainer.steps_done == list(range(20))
    mon.flush()
    assert_reported_once(spherewatch_logs.records, fired, "sink:mlflow")
    assert mon.faults["sink:mlflow"] == 1
    assert [getattr(s, "name", None) for s in mon.sinks] == ["mlflow"]  # retried, not disabled
    (spool,) = _spool_files(spool_dir)
    spooled = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [r["step"] for r in spooled if r["op"] == "scalars"] == evaluation_steps(range(20), EVERY)

    mlflow_server.ensure_started()
    trainer.run(mon, range(20, 30), embeddings=_poison)
    mon.close()
    assert not _spool_files(spool_dir)
    run_id = mon.sink("mlflow").run_id
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("reliability").experiment_id],
                              filter_string="attributes.run_name = 'late-server'")
    assert [r.info.run_id for r in runs] == [run_id]  # one run: the retries opened no second one
    expected = _assert_server_has_the_clean_run(client, run_id, make_monitor, range(30), _poison,
                                                [a for a in fired if a.rule != "monitor_fault"])
    assert ("nonfinite", "spherewatch/uniformity", NAN_STEP) in expected
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_frozen_server_loses_nothing_and_duplicates_nothing(mlflow_server, make_monitor, spherewatch_logs,
                                                             tmp_path):
    """SIGSTOP: connections are accepted but never answered. After SIGCONT the server may still process the
    timed-out requests: the replay must not duplicate their points."""
    from mlflow import MlflowClient

    mlflow_server.ensure_started()
    fired = []
    spool_dir = tmp_path / "spool"
    mon = make_monitor(sinks=("mlflow",), tracking_uri=mlflow_server.uri, every_n_steps=EVERY,
                       experiment_name="reliability", run_name="frozen", spool_dir=str(spool_dir),
                       on_alert=fired.append)
    trainer = TinyTrainer().run(mon, range(0, 6), embeddings=_poison)
    run_id = _run_id(mon)
    os.killpg(mlflow_server.proc.pid, signal.SIGSTOP)
    try:
        trainer.run(mon, range(6, 16), embeddings=_poison)
        mon.flush(timeout=60)
    finally:
        os.killpg(mlflow_server.proc.pid, signal.SIGCONT)
    assert_reported_once(spherewatch_logs.records, fired, "sink:mlflow")
    trainer.run(mon, range(16, 24), embeddings=_poison)
    mon.close()
    assert trainer.steps_done == list(range(24))
    assert not _spool_files(spool_dir)
    client = MlflowClient(mlflow_server.uri)
    _assert_server_has_the_clean_run(client, run_id, make_monitor, range(24), _poison,
                                     [a for a in fired if a.rule != "monitor_fault"])


def test_a_killed_and_restarted_server_gets_the_backlog_once_in_batches(
    mlflow_server, make_monitor, spherewatch_logs, tmp_path
):
    from mlflow import MlflowClient

    mlflow_server.ensure_started()
    fired = []
    spool_dir = tmp_path / "spool"
    common = dict(sinks=("mlflow",), tracking_uri=mlflow_server.uri, every_n_steps=EVERY,
                  experiment_name="reliability")
    mon = make_monitor(**common, run_name="outage", spool_dir=str(spool_dir), on_alert=fired.append)
    strict = make_monitor(**common, run_name="strict", spool_dir=str(tmp_path / "strict-spool"), strict=True)
    trainer, strict_trainer = TinyTrainer(), TinyTrainer()
    client = MlflowClient(mlflow_server.uri)
    trainer.run(mon, range(0, 10), embeddings=_poison)
    strict_trainer.run(strict, range(0, 10))
    run_id = _run_id(mon)
    assert scalar_steps(_server_history(client, run_id, "spherewatch/uniformity")) == [0, 2, 4, 6, 8]

    mlflow_server.stop()
    trainer.run(mon, range(10, 20), embeddings=_poison)
    mon.flush()
    assert_reported_once(spherewatch_logs.records, fired, "sink:mlflow")
    with pytest.raises(sw.SpherewatchError, match=r"spherewatch sink:mlflow failed: .*"):
        strict_trainer.run(strict, range(10, 11))  # strict writes on the caller's thread: the failure raises here

    calls = []  # counted from before the restart: the sink's own thread may deliver the backlog at once
    inner = mon.sink("mlflow")
    real = inner.client.log_batch
    inner.client.log_batch = lambda *a, **k: (calls.append(len(k.get("metrics") or [])), real(*a, **k))[1]
    mlflow_server.start()  # same port, same store
    mon.flush()
    trainer.run(mon, range(20, 30), embeddings=_poison)
    mon.close()
    assert trainer.steps_done == list(range(30))
    assert not _spool_files(spool_dir)
    assert_reported_once(spherewatch_logs.records, fired, "sink:mlflow")  # once, for the whole outage
    assert max(calls) > 8 * 3, calls  # the backlog went in batches of several steps, not one request per step
    expected_alerts = _assert_server_has_the_clean_run(client, run_id, make_monitor, range(30), _poison,
                                                       trainer.fired)
    with open(client.download_artifacts(run_id, "spherewatch/alerts.json", str(tmp_path))) as f:
        assert [(a["rule"], a["key"], a["step"]) for a in json.load(f)] == expected_alerts
    assert client.get_run(run_id).info.status == "FINISHED"


_KILLED_RUN = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from reliability._harness import TinyTrainer
    import spherewatch as sw
    mon = sw.Monitor(sinks=("mlflow",), tracking_uri=sys.argv[2], every_n_steps=2, experiment_name="reliability",
                     run_name="killed", spool_dir=sys.argv[3], warn=False, sample_first_step=False)
    trainer = TinyTrainer().run(mon, range(0, 10))
    run_id = mon.sink("mlflow").run_id
    print(json.dumps({"run_id": run_id}), flush=True)
    sys.stdin.readline()  # the server is frozen now
    trainer.run(mon, range(10, 20))
    mon.flush(timeout=60)
    print("spooled", flush=True)
    time.sleep(600)  # SIGKILLed here
""")


def test_a_sigkilled_runs_spool_is_replayed_once_into_its_own_run_by_the_next_run(
    mlflow_server, make_monitor, tmp_path
):
    from mlflow import MlflowClient

    mlflow_server.ensure_started()
    spool_dir = tmp_path / "spool"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(Path(__file__).parents[1]), mlflow_server.uri,
                             str(spool_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        killed_run = json.loads(proc.stdout.readline())["run_id"]
        os.killpg(mlflow_server.proc.pid, signal.SIGSTOP)
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "spooled"
            proc.kill()
            proc.wait(30)
        finally:
            os.killpg(mlflow_server.proc.pid, signal.SIGCONT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _spool_files(spool_dir)

    # the next run on the same spool folder: a new run of its own, the killed run's spool goes into the killed run
    mon = make_monitor(sinks=("mlflow",), tracking_uri=mlflow_server.uri, every_n_steps=EVERY,
                       experiment_name="reliability", run_name="next", spool_dir=str(spool_dir))
    TinyTrainer(seed=1).run(mon, range(0, 6))
    deadline = time.monotonic() + 60
    while _spool_files(spool_dir) and time.monotonic() < deadline:
        mon.flush()
        time.sleep(0.2)
    mon.close()
    assert not _spool_files(spool_dir)
    client = MlflowClient(mlflow_server.uri)
    next_run = mon.sink("mlflow").run_id
    assert next_run != killed_run
    key = "spherewatch/uniformity"
    assert scalar_steps(_server_history(client, killed_run, key)) == evaluation_steps(range(20), EVERY)
    assert scalar_steps(_server_history(client, next_run, key)) == evaluation_steps(range(6), EVERY)
    assert client.get_run(killed_run).info.status == "FINISHED"  # ended by the replay, not left RUNNING
    # a third run finds nothing left to replay: exactly once
    third = make_monitor(sinks=("mlflow",), tracking_uri=mlflow_server.uri, every_n_steps=EVERY,
                         experiment_name="reliability", run_name="third", spool_dir=str(spool_dir))
    TinyTrainer(seed=2).run(third, range(0, 2))
    third.close()
    assert scalar_steps(_server_history(client, killed_run, key)) == evaluation_steps(range(20), EVERY)
