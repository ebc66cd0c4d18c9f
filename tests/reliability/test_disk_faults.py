"""Fault row 2: the disk under a sink fails mid-run (tests run as root, so chmod cannot make a folder unwritable).

Real OS-level faults: the TensorBoard log folder replaced by a file, a JSONL sink on ``/dev/full`` (ENOSPC on every
write), and writes past ``RLIMIT_FSIZE`` (EFBIG after a partial write) in a subprocess. Each is reported once,
training finishes, and every point arrives exactly once: after recovery in the same run, or from the spool file
in the next run when the disk never recovers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability._harness import TinyTrainer, assert_reported_once, evaluation_steps, scalar_steps

import spherewatch as sw
from spherewatch.sinks import read_jsonl

EVERY = 2
U = "spherewatch/uniformity"
WORKER = Path(__file__).with_name("_fsize_worker.py")
# tensorboard's writer thread dies with the error it hit (and the sink opens a new writer); pytest reports such a
# thread as a warning, possibly during the next test
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="/dev/full and RLIMIT_FSIZE + SIGXFSZ are Linux faults")


def _poison_at(*steps):
    def poison(step, z1, z2):
        if step in steps:
            z1 = z1.detach().clone()
            z1[0] = float("nan")
        return z1, z2
    return poison


def _spool_files(spool_dir, sink):
    """The spool files of ``sink`` under ``spool_dir`` (one folder per monitor run)."""
    return sorted(Path(spool_dir).glob(f"*/{sink}-*.spool.jsonl"))


def _clean_run(make_monitor, steps, poison):
    """What a fault-free run logs: ``(memory sink, alerts)``."""
    mon = make_monitor(sinks=("memory",), every_n_steps=EVERY)
    trainer = TinyTrainer().run(mon, steps, embeddings=poison)
    return mon.sink("memory"), trainer.fired


def _assert_same_points(got, memory, steps):
    """``got``: ``{key: [(step, value), ...]}``. Every key of the clean run, every evaluation step once, same values."""
    assert set(got) >= set(memory.keys())
    for key in memory.keys():
        assert scalar_steps(got[key]) == evaluation_steps(steps, EVERY), key  # no gap, no duplicate
        assert [v for _, v in got[key]] == pytest.approx(
            [v for _, v in memory.history(key)], rel=1e-6, abs=1e-6, nan_ok=True), key


def test_tensorboard_log_dir_replaced_by_a_file_is_reported_once_and_recovers_without_loss(
    make_monitor, spherewatch_logs, tmp_path
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir, moved = tmp_path / "tb", tmp_path / "tb-moved"
    fired = []
    mon = make_monitor(sinks=("tensorboard", "jsonl"), log_dir=str(log_dir), jsonl_path=str(tmp_path / "run.jsonl"),
                       spool_dir=str(tmp_path / "spool"), every_n_steps=EVERY, on_alert=fired.append)
    poison = _poison_at(10)
    trainer = TinyTrainer().run(mon, range(0, 6), embeddings=poison)
    mon.flush()  # the sinks are written on the monitor's writer thread: let it catch up before breaking the disk
    log_dir.rename(moved)
    log_dir.write_text("not a folder")  # the writer's next append fails: NotADirectoryError
    trainer.run(mon, range(6, 12), embeddings=poison)
    mon.flush()
    _, alert = assert_reported_once(spherewatch_logs.records, fired, "sink:tensorboard")
    assert alert.step == 6 and "Not a directory" in alert.message
    assert _spool_files(tmp_path / "spool", "tensorboard")
    log_dir.unlink()
    moved.rename(log_dir)
    trainer.run(mon, range(12, 20), embeddings=poison)
    mon.close()
    assert trainer.steps_done == list(range(20))
    assert max(trainer.step_seconds) < 5.0
    assert_reported_once(spherewatch_logs.records, fired, "sink:tensorboard")  # once for the whole outage
    assert not _spool_files(tmp_path / "spool", "tensorboard")

    memory, clean_alerts = _clean_run(make_monitor, range(20), poison)
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tb = {key: [(e.step, e.value) for e in events.Scalars(key)] for key in events.Tags()["scalars"]}
    _assert_same_points(tb, memory, range(20))  # the old event file, then the new one: each point once
    alert_steps = [e.step for e in events.Tensors("spherewatch/alerts/text_summary")]
    assert sorted({a.step for a in clean_alerts}) == [10]  # the alert fired during the outage
    assert alert_steps == [10, 16]  # ... and its "resolved" event (3 clean evaluations later) reached the sink too
    _assert_same_points(read_jsonl(tmp_path / "run.jsonl")["scalars"], memory, range(20))  # the other sink: untouched


def test_a_sink_that_cannot_be_opened_at_start_is_retried_and_gets_every_point_once_it_can(
    make_monitor, spherewatch_logs, tmp_path
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    log_dir.write_text("a file where the log folder should be")
    fired = []
    mon = make_monitor(sinks=("tensorboard", "jsonl"), log_dir=str(log_dir), jsonl_path=str(tmp_path / "run.jsonl"),
                       spool_dir=str(tmp_path / "spool"), every_n_steps=EVERY, on_alert=fired.append)
    trainer = TinyTrainer().run(mon, range(10))
    mon.flush()
    _, alert = assert_reported_once(spherewatch_logs.records, fired, "sink:tensorboard")
    assert "spooled and replayed" in alert.message and alert.step == 0
    assert [getattr(s, "name", None) for s in mon.sinks] == ["tensorboard", "jsonl"]  # not disabled
    assert _spool_files(tmp_path / "spool", "tensorboard")
    log_dir.unlink()  # the folder can be created now: the next retry opens the sink and replays the backlog
    trainer.run(mon, range(10, 20))
    mon.close()
    assert trainer.steps_done == list(range(20))
    assert not _spool_files(tmp_path / "spool", "tensorboard")
    memory, _ = _clean_run(make_monitor, range(20), None)
    _assert_same_points(read_jsonl(tmp_path / "run.jsonl")["scalars"], memory, range(20))
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    tb = {key: [(e.step, e.value) for e in events.Scalars(key)] for key in events.Tags()["scalars"]}
    _assert_same_points(tb, memory, range(20))


def test_tensorboard_log_dir_replaced_by_a_file_raises_under_strict(make_monitor, tmp_path):
    pytest.importorskip("tensorboard")
    log_dir = tmp_path / "tb"
    mon = make_monitor(sinks=("tensorboard",), log_dir=str(log_dir), every_n_steps=EVERY, strict=True)
    trainer = TinyTrainer().run(mon, range(0, 4))
    log_dir.rename(tmp_path / "tb-moved")
    log_dir.write_text("not a folder")
    with pytest.raises(sw.SpherewatchError, match="spherewatch sink:tensorboard failed: NotADirectoryError"):
        trainer.run(mon, range(4, 5))
    with pytest.raises(sw.SpherewatchError, match="sink:tensorboard failed"):  # strict: closing fails loudly too
        mon.close()  # (and joins tensorboard's failed writer thread within this test)


@linux_only
def test_jsonl_on_a_full_disk_keeps_every_point_in_the_spool_for_the_next_run(
    make_monitor, spherewatch_logs, tmp_path
):
    fired = []
    spool_dir = tmp_path / "spool"
    poison = _poison_at(4)
    full = make_monitor(sinks=("jsonl",), jsonl_path="/dev/full", spool_dir=str(spool_dir), every_n_steps=EVERY,
                        on_alert=fired.append)
    trainer = TinyTrainer().run(full, range(0, 10), embeddings=poison)
    full.close()
    assert trainer.steps_done == list(range(10))
    _, alert = assert_reported_once(spherewatch_logs.records, fired, "sink:jsonl")
    assert "No space left on device" in alert.message and alert.step == 0
    (spool,) = _spool_files(spool_dir, "jsonl")
    spooled = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [r["step"] for r in spooled if r["op"] == "scalars"] == evaluation_steps(range(10), EVERY)
    assert {r["alert"]["step"] for r in spooled if r["op"] == "alert"} == {4}
    assert any("kept in the spool file" in r.getMessage() for r in spherewatch_logs.records)

    # The next run (resumed, same spool folder, a disk with room) delivers the backlog before its own points.
    resumed = make_monitor(sinks=("jsonl",), jsonl_path=str(tmp_path / "run.jsonl"), spool_dir=str(spool_dir),
                           every_n_steps=EVERY)
    resumed.load_state_dict(json.loads(json.dumps(full.state_dict())))
    trainer.run(resumed, range(10, 20), embeddings=poison)
    resumed.close()
    assert not spool.exists()
    logged = read_jsonl(tmp_path / "run.jsonl")
    memory, clean_alerts = _clean_run(make_monitor, range(20), poison)
    _assert_same_points(logged["scalars"], memory, range(20))
    # what a clean run's sink got: the alerts and their "resolved" events
    assert [(a.rule, a.key, a.step) for a in logged["alerts"]] == [(a.rule, a.key, a.step) for a in memory.alerts]


@linux_only
def test_jsonl_on_a_full_disk_raises_under_strict(make_monitor, tmp_path):
    mon = make_monitor(sinks=("jsonl",), jsonl_path="/dev/full", spool_dir=str(tmp_path / "spool"),
                       every_n_steps=EVERY, strict=True)
    with pytest.raises(sw.SpherewatchError, match=r"spherewatch sink:jsonl failed: OSError: \[Errno 28\] No space"):
        TinyTrainer().run(mon, range(0, 1))


@linux_only
def test_jsonl_writes_past_the_file_size_limit_recover_once_it_is_lifted(make_monitor, tmp_path):
    out = tmp_path / "fsize"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(WORKER), str(out)], cwd=str(out), env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_done"] == list(range(40))
    assert summary["max_step_seconds"] < 5.0
    assert summary["jsonl_size_during_fault"] < summary["limit"]  # the partial record was cut off again
    assert summary["faults"] == {"sink:jsonl": 1}
    faults = [a for a in summary["fired"] if a["rule"] == "monitor_fault"]
    assert len(faults) == 1 and "File too large" in faults[0]["message"] and faults[0]["step"] == 10
    assert len([m for m in summary["fault_logs"] if m.startswith("spherewatch: sink:jsonl failed")]) == 1
    # the spool file hit the limit too: its backlog went on in memory, and no stale copy was left behind
    assert any("cannot write the spool file" in m for m in summary["warnings"])
    assert summary["spool_after_close"] == []

    lines = (out / "run.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # no line glued to a partly written one
    logged = read_jsonl(out / "run.jsonl")
    memory, clean_alerts = _clean_run(make_monitor, range(40), _poison_at(16))
    _assert_same_points(logged["scalars"], memory, range(40))
    assert [(a.rule, a.step) for a in logged["alerts"]] == [(a.rule, a.step) for a in memory.alerts]  # + resolved
    assert {a.step for a in clean_alerts} == {16}
