"""The background writer: sink I/O off the training thread, a bounded queue that overflows to disk, close with a
deadline, a spool that knows its run, and shutdown paths (signal handler, interpreter exit without close()).

Real sinks (JSONL files, TensorBoard event files, a local HTTP webhook endpoint, an MLflow SQLite store); a sink
that blocks is a real MemorySink behind a threading.Event, to play a frozen destination deterministically.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from reliability._harness import TinyTrainer, evaluation_steps, scalar_steps
from webhook_server import WebhookEndpoint

import spherewatch as sw
from spherewatch.sinks import JsonlSink, MemorySink, ResilientSink, read_jsonl
from spherewatch.writer import RecordWriter

pytestmark = pytest.mark.timeout(180)
U = "spherewatch/uniformity"
TESTS = Path(__file__).parents[1]


class GateSink(MemorySink):
    """A memory sink whose writes wait while ``gate`` is clear (a frozen destination); records each call's thread."""

    name = "gate"

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.threads = set()

    def log_scalars(self, step, scalars, *, wall_time=None):
        self.threads.add(threading.current_thread().name)
        self.gate.wait()
        super().log_scalars(step, scalars)

    def flush(self):
        self.threads.add(threading.current_thread().name)

    def close(self):
        self.threads.add(threading.current_thread().name)
        super().close()


class Faults:
    def __init__(self):
        self.reports = []

    def report(self, part, exc, consequence="skipped", step=None):
        self.reports.append((part, step, str(exc)))

    def recovered(self, part):
        pass


def _writer(tmp_path, *sinks, **fields):
    fields.setdefault("spool_dir", str(tmp_path / "spool"))
    fields.setdefault("log_dir", str(tmp_path / "runs"))
    config = sw.MonitorConfig(sinks=(), **fields) if sinks else sw.MonitorConfig(**fields)
    return RecordWriter(config, list(sinks), Faults(), max_queue=4)


def test_sink_io_runs_on_the_writer_thread_only(make_monitor, tmp_path):
    gate = GateSink()
    mon = sw.Monitor(sinks=[gate], every_n_steps=2, log_dir=str(tmp_path), warn=False, sample_first_step=False)
    TinyTrainer().run(mon, range(10))
    mon.close()
    assert gate.threads == {"spherewatch-writer"}
    assert scalar_steps(gate.history(U)) == evaluation_steps(range(10), 2)


def test_a_frozen_sink_never_holds_training_and_a_full_queue_overflows_to_disk_without_loss(tmp_path):
    gate = GateSink()
    gate.gate.clear()
    writer = _writer(tmp_path, gate)
    for step in range(50):  # the queue holds 4: the rest goes to the overflow file
        writer.submit(step, {U: float(step)}, {}, [])
    overflow = list((tmp_path / "spool").glob("*/queue-*.spool.jsonl"))
    assert len(overflow) == 1 and len(overflow[0].read_text().splitlines()) >= 40
    gate.gate.set()
    writer.close()
    assert scalar_steps(gate.history(U)) == list(range(50))  # every record, once, in order
    assert not list((tmp_path / "spool").glob("*/*.spool.jsonl"))


def test_close_gives_up_at_its_deadline_and_the_resumed_run_delivers_the_rest_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="spherewatch")
    first = JsonlSink(tmp_path / "a.jsonl")
    gate = GateSink()
    gate.gate.clear()
    writer = _writer(tmp_path, first, gate)
    for step in range(10):
        writer.submit(step, {U: float(step)}, {}, [])
    writer.close(timeout=0.3)  # the gate sink is stuck in step 0: nothing more can be written
    assert any("close_timeout" in r.getMessage() and writer.folder in r.getMessage() for r in caplog.records)
    state = writer.state_dict()

    again_a, again_gate = JsonlSink(tmp_path / "a.jsonl"), GateSink()
    resumed = _writer(tmp_path, again_a, again_gate)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.submit(10, {U: 10.0}, {}, [])
    resumed.close()
    again_a.close()
    assert scalar_steps(read_jsonl(tmp_path / "a.jsonl")["scalars"][U]) == list(range(11))  # once each
    # step 0 was in flight to the gate sink when close gave up: it is replayed to that sink only
    assert gate.history(U) == [] and scalar_steps(again_gate.history(U)) == list(range(11))
    assert not list((tmp_path / "spool").glob("*/*.spool.jsonl"))
    gate.gate.set()  # let the abandoned writer thread of the first run end


def test_a_live_runs_spool_is_never_replayed_by_another_run_and_an_ended_one_goes_to_its_own_sink(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where run A's log folder should be")
    a = sw.Monitor(sinks=("jsonl",), jsonl_path=str(blocked / "a.jsonl"), spool_dir=str(tmp_path / "spool"),
                   every_n_steps=1, warn=False)
    TinyTrainer().run(a, range(5))
    a.flush()
    assert len(list((tmp_path / "spool").glob("*/jsonl-0.spool.jsonl"))) == 1

    b = sw.Monitor(sinks=("jsonl",), jsonl_path=str(tmp_path / "b.jsonl"), spool_dir=str(tmp_path / "spool"),
                   every_n_steps=1, warn=False)
    TinyTrainer(seed=1).run(b, range(3))
    b.flush()
    assert len(list((tmp_path / "spool").glob("*/jsonl-0.spool.jsonl"))) == 1  # A's spool: locked, untouched
    a.close(timeout=1)  # A ends with its sink still down: its records stay spooled under its own run key
    b.close()
    assert scalar_steps(read_jsonl(tmp_path / "b.jsonl")["scalars"][U]) == [0, 1, 2]  # only B's own points

    blocked.unlink()  # A's destination works again; the next run on this spool folder replays A into A's file
    # (a crashed run's local file is replayed only when it is this run's: its own destination, or inside its log_dir)
    c = sw.Monitor(sinks=("memory",), log_dir=str(tmp_path), spool_dir=str(tmp_path / "spool"), every_n_steps=1,
                   warn=False)
    TinyTrainer(seed=2).run(c, range(2))
    c.flush()
    c.close()
    assert scalar_steps(read_jsonl(blocked / "a.jsonl")["scalars"][U]) == [0, 1, 2, 3, 4]
    assert scalar_steps(read_jsonl(tmp_path / "b.jsonl")["scalars"][U]) == [0, 1, 2]
    assert not list((tmp_path / "spool").glob("*/*.spool.jsonl"))


def test_jsonl_sink_recreates_a_deleted_log_folder(make_monitor, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="spherewatch")
    path = tmp_path / "logs" / "run.jsonl"
    mon = make_monitor(sinks=("jsonl",), jsonl_path=str(path), every_n_steps=2)
    trainer = TinyTrainer().run(mon, range(6))
    mon.flush()
    shutil.rmtree(tmp_path / "logs")
    trainer.run(mon, range(6, 12))
    mon.close()
    assert scalar_steps(read_jsonl(path)["scalars"][U]) == [6, 8, 10]  # every point after the deletion
    assert any("was deleted" in r.getMessage() for r in caplog.records)


def test_a_failed_spool_write_is_retried_and_spooling_never_stops(tmp_path):
    class Down(MemorySink):
        name = "down"

        def log_scalars(self, step, scalars, *, wall_time=None):
            raise ConnectionError("down")

    now = [0.0]
    folder = tmp_path / "spool"
    folder.write_text("not a folder yet")  # the spool cannot be written: the disk is "full"
    sink = ResilientSink(Down(), spool_path=str(folder / "down.spool.jsonl"), retry_initial=1.0, retry_max=4.0,
                         clock=lambda: now[0])
    for step in range(3):
        sink.log_scalars(step, {U: float(step)})
        now[0] += 0.1
    assert sink.pending == 3 and not (tmp_path / "spool").is_dir()
    folder.unlink()
    now[0] += 10.0
    for step in range(3, 6):
        sink.log_scalars(step, {U: float(step)})
    lines = [json.loads(x) for x in (folder / "down.spool.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(6))  # the whole backlog, once, after the spool came back
    sink._close_spool_fd()  # a crash: the next sink on this spool gets everything
    replay = ResilientSink(MemorySink(), spool_path=str(folder / "down.spool.jsonl"))
    replay.flush()
    assert scalar_steps(replay.inner.history(U)) == list(range(6))


_SIGTERM_LOOP = textwrap.dedent("""
    import os, random, signal, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from reliability._harness import TinyTrainer
    import spherewatch as sw
    from spherewatch.sinks import read_jsonl
    out = sys.argv[2]
    random.seed(0)
    for i in range(int(sys.argv[3])):
        mon = sw.Monitor(sinks=("tensorboard", "jsonl"), log_dir=os.path.join(out, f"run{i}"), every_n_steps=1,
                         warn=False, close_timeout=20)
        closed = []

        def on_term(signum, frame, mon=mon):
            mon.close()  # the usual graceful-shutdown handler: interrupts whatever the training thread is doing
            closed.append(True)

        signal.signal(signal.SIGTERM, on_term)
        trainer = TinyTrainer(seed=i, batch=16)
        trainer.run(mon, [0])  # the first evaluation starts the writer (and its TensorBoard import)
        threading.Timer(random.uniform(0.02, 0.5), os.kill, (os.getpid(), signal.SIGTERM)).start()
        step = 1
        while not closed:
            trainer.run(mon, [step])
            step += 1
        path = os.path.join(out, f"run{i}", "spherewatch.jsonl")
        got = [s for s, _ in read_jsonl(path)["scalars"].get("spherewatch/uniformity", [])
               ] if os.path.exists(path) else []
        assert got == list(range(len(got))) and len(got) >= step - 1, (got, step)
        print("closed", i, step, flush=True)
""")


def test_close_from_a_sigterm_handler_during_heavy_writing_never_deadlocks(tmp_path):
    pytest.importorskip("tensorboard")
    runs = 12
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _SIGTERM_LOOP, str(TESTS), str(tmp_path), str(runs)], env=env,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert [line.split()[:2] for line in done.stdout.splitlines()] == [["closed", str(i)] for i in range(runs)]


_EXIT_WITHOUT_CLOSE = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from reliability._harness import TinyTrainer
    import spherewatch as sw

    def nan_rows(step, z1, z2):  # every other batch: the non-finite alerts fire again and again
        if step % 2:
            z1 = z1.detach().clone()
            z1[0] = float("nan")
        return z1, z2

    # cooldown=1: a reminder on every NaN sample while the alert stays open (a flapping condition is one open alert)
    mon = sw.Monitor(sinks=("jsonl", "mlflow"), log_dir=sys.argv[2], tracking_uri=sys.argv[3], every_n_steps=1,
                     webhook_url=sys.argv[4], warn=False, experiment_name="exit", sample_first_step=False,
                     rules=[{"kind": "nonfinite", "cooldown": 1}])
    TinyTrainer().run(mon, range(60), embeddings=nan_rows)
    print(sum(a.status == "fired" for a in mon.alerts), flush=True)  # resolutions are not posted
    # no close(): the interpreter exits here
""")


def test_exiting_without_close_delivers_queued_webhook_alerts_every_point_and_ends_the_mlflow_run(
    tmp_path, mlflow_template_db
):
    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template_db, db)
    endpoint = WebhookEndpoint("T0/B0/exit-secret")
    try:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-c", _EXIT_WITHOUT_CLOSE, str(TESTS), str(tmp_path / "logs"),
                               f"sqlite:///{db}", endpoint.url], env=env, capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stderr[-3000:]
        fired = int(done.stdout.split()[-1])
        assert fired >= 30
        assert len(endpoint.answered_ok()) == fired  # every queued alert was posted before the process ended
    finally:
        endpoint.close()
    assert scalar_steps(read_jsonl(tmp_path / "logs" / "spherewatch.jsonl")["scalars"][U]) == list(range(60))
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("exit").experiment_id])
    assert run.info.status == "FINISHED"  # not left RUNNING
    assert len(client.get_metric_history(run.info.run_id, U)) == 60


def test_credentials_in_urls_never_leave_the_process(make_monitor, spherewatch_logs, tmp_path):
    secret = "hunter2pw"

    class Unreachable(MemorySink):
        name = "remote"

        def log_scalars(self, step, scalars, *, wall_time=None):
            raise ConnectionError(f"cannot reach http://bob:{secret}@tracking.internal:5000/api/2.0/mlflow")

    endpoint = WebhookEndpoint("T0/B0/cred-secret")
    fired = []
    try:
        mon = make_monitor(sinks=[Unreachable()], every_n_steps=2, webhook_url=endpoint.url, on_alert=fired.append,
                           warn=True)
        with pytest.warns(sw.MonitorFault) as warned:  # a failing sink is a fault of the monitor
            TinyTrainer().run(mon, range(4))
            mon.flush()
            mon.close()
        texts = [r.getMessage() + (r.exc_text or "") for r in spherewatch_logs.records]
        texts += [a.message for a in fired] + [str(w.message) for w in warned]
        texts += [r["text"] for r in endpoint.requests]
        assert any("monitor_fault" == a.rule for a in fired) and endpoint.requests
        assert all(secret not in t for t in texts)
        assert any("http://***@tracking.internal" in t for t in texts)
    finally:
        endpoint.close()


def test_retry_after_zero_does_not_make_the_webhook_spin(tmp_path):
    from spherewatch.alerts.webhook import WebhookChannel

    endpoint = WebhookEndpoint("T0/B0/spin-secret")
    try:
        endpoint.plan.extend([("status", 429, {"Retry-After": "0"})] * 4)
        channel = WebhookChannel(endpoint.url, backoff_initial=0.05, backoff_max=1.0)
        channel.send(sw.Alert(rule="r", key=U, value=1.0, step=1))
        assert channel.flush(timeout=30)
        channel.close()
        times = [r["time"] for r in endpoint.requests]
        assert len(times) == 5 and channel.delivered == 1  # four 429s, then delivered: no tight loop
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(g >= 0.04 for g in gaps), gaps  # each retry waited at least the (doubling) backoff
    finally:
        endpoint.close()


def test_a_webhook_give_up_is_a_reported_monitor_fault_and_raises_under_strict(make_monitor, tmp_path):
    endpoint = WebhookEndpoint("T0/B0/giveup-secret")
    try:
        endpoint.plan.extend([("status", 404, {})] * 10)
        fired = []
        rules = [{"kind": "nonfinite", "metric": "uniformity"}]

        def nan_at_2(step, z1, z2):
            if step == 2:
                z1 = z1.detach().clone()
                z1[0] = float("nan")
            return z1, z2

        mon = make_monitor(sinks=("memory",), every_n_steps=1, webhook_url=endpoint.url, rules=rules,
                           on_alert=fired.append)
        TinyTrainer().run(mon, range(4), embeddings=nan_at_2)
        mon.close()
        assert mon.faults["webhook"] >= 1
        assert [a.key for a in fired if a.rule == "monitor_fault"] == ["spherewatch/monitor/webhook"]

        strict = make_monitor(sinks=("memory",), every_n_steps=1, webhook_url=endpoint.url, rules=rules,
                              strict=True)
        trainer = TinyTrainer()
        with pytest.raises(sw.SpherewatchError, match="webhook"):
            trainer.run(strict, range(3), embeddings=nan_at_2)
            for _ in range(200):  # the give-up happens on the webhook thread: the next step raises it
                trainer.run(strict, [trainer.steps_done[-1] + 1])
                threading.Event().wait(0.02)
    finally:
        endpoint.close()
