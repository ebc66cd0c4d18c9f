import json
import logging
import os

import numpy as np
import pytest

from spherewatch.alerts.alert import Alert
from spherewatch.errors import SpherewatchError
from spherewatch.sinks import JsonlSink, MemorySink, ResilientSink, read_jsonl

U = "spherewatch/uniformity"


class FlakySink(MemorySink):
    """A real in-memory sink whose destination can go down (raises ConnectionError while `down`)."""

    name = "flaky"

    def __init__(self, fail_next=0):
        super().__init__()
        self.down = False
        self.fail_next = fail_next
        self.attempts = 0

    def _gate(self):
        self.attempts += 1
        if self.down:
            raise ConnectionError("destination unreachable")
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("transient failure")

    def log_scalars(self, step, scalars, *, wall_time=None):
        self._gate()
        super().log_scalars(step, scalars)

    def log_histogram(self, step, key, values, *, wall_time=None):
        self._gate()
        super().log_histogram(step, key, values)

    def log_alert(self, alert):
        self._gate()
        super().log_alert(alert)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _wrap(inner, **kwargs):
    errors = []
    kwargs.setdefault("on_error", lambda name, exc: errors.append((name, exc)))
    return ResilientSink(inner, **kwargs), errors


def test_outage_is_reported_once_and_the_backlog_is_replayed_in_order_without_duplicates(caplog):
    caplog.set_level(logging.INFO, logger="spherewatch")
    inner, clock = FlakySink(), Clock()
    sink, errors = _wrap(inner, retry_initial=1.0, clock=clock)
    sink.log_scalars(0, {U: -3.9})
    inner.down = True
    for step in range(1, 6):
        sink.log_scalars(step, {U: -3.9 + step / 10})
        clock.now += 0.5
    sink.log_histogram(5, "spherewatch/spectrum", [0.5, 0.5])
    sink.log_alert(Alert(rule="r", key=U, value=-3.4, step=5))
    assert [name for name, _ in errors] == ["flaky"] and isinstance(errors[0][1], ConnectionError)
    assert sink.pending == 7 and not sink.healthy
    assert caplog.text.count("failed (ConnectionError") == 1

    inner.down = False
    clock.now += 60.0
    sink.log_scalars(6, {U: -3.2})
    assert sink.pending == 0 and sink.healthy
    assert [step for step, _ in inner.scalars] == [0, 1, 2, 3, 4, 5, 6]
    assert inner.history(U)[1:3] == [(1, pytest.approx(-3.8)), (2, pytest.approx(-3.7))]
    assert len(inner.histograms) == 1 and len(inner.alerts) == 1
    assert caplog.text.count("recovered") == 1
    assert len(errors) == 1


def test_retries_wait_for_an_exponential_backoff_without_sleeping():
    inner, clock = FlakySink(), Clock()
    sink, _ = _wrap(inner, retry_initial=1.0, retry_max=4.0, clock=clock)
    inner.down = True
    attempt_times = []
    for tick in range(80):  # 20 s of calls, one every 0.25 s
        clock.now = tick * 0.25
        before = inner.attempts
        sink.log_scalars(tick, {U: 0.0})
        if inner.attempts > before:
            attempt_times.append(clock.now)
    # first call fails at t=0; retries after 1, then 2, then 4 (capped) seconds
    assert attempt_times[:6] == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0]
    assert inner.attempts == len(attempt_times)  # one attempt per retry, the backlog is not re-walked


def test_flush_respects_the_backoff_and_close_makes_a_last_attempt():
    inner, clock = FlakySink(fail_next=1), Clock()
    sink, errors = _wrap(inner, retry_initial=100.0, retry_max=100.0, clock=clock)
    sink.log_scalars(0, {U: -1.0})
    sink.log_scalars(1, {U: -1.1})  # still inside the backoff: queued, not attempted
    sink.flush()  # the Monitor flushes every sampling step: no retry storm
    assert sink.pending == 2 and inner.attempts == 1
    clock.now = 100.0
    sink.flush()
    assert sink.pending == 0 and inner.history(U) == [(0, -1.0), (1, -1.1)]
    inner.fail_next = 1
    sink.log_scalars(2, {U: -1.2})
    assert sink.pending == 1
    sink.close()  # ignores the backoff
    assert inner.history(U)[-1] == (2, -1.2)
    sink.close()
    assert inner.closed and len(errors) == 2  # two outages, each reported once
    with pytest.raises(SpherewatchError, match="closed"):
        sink.log_scalars(2, {U: 0.0})


def test_spool_file_keeps_the_backlog_across_a_crash_and_is_replayed_first(tmp_path, caplog):
    spool = tmp_path / "spool" / "flaky.jsonl"
    inner = FlakySink()
    inner.down = True
    sink, _ = _wrap(inner, spool_path=str(spool), retry_initial=0.0)
    sink.log_scalars(1, {U: float("nan")}, wall_time=111.0)
    sink.log_histogram(1, "spherewatch/spectrum", np.array([0.7, 0.3]))
    sink.log_alert(Alert(rule="nonfinite", key=U, value=float("nan"), step=1, severity="critical"))
    lines = spool.read_text().splitlines()
    assert [json.loads(line)["op"] for line in lines] == ["scalars", "histogram", "alert"]
    assert not os.stat(spool).st_mode & 0o002
    del sink  # the process dies here: no close()

    caplog.set_level(logging.INFO, logger="spherewatch")
    fresh = MemorySink()
    resumed = ResilientSink(fresh, spool_path=str(spool))
    assert resumed.pending == 3 and "found 3 undelivered record(s)" in caplog.text
    resumed.log_scalars(2, {U: -3.0})
    assert [step for step, _ in fresh.scalars] == [1, 2]
    assert np.isnan(fresh.scalars[0][1][U])
    np.testing.assert_array_equal(fresh.histograms[0][2], [0.7, 0.3])
    assert fresh.alerts[0].rule == "nonfinite" and np.isnan(fresh.alerts[0].value)
    assert resumed.pending == 0 and not spool.exists()  # delivered: the spool is removed
    resumed.close()


def test_close_while_down_keeps_undelivered_records_in_the_spool_and_names_it(tmp_path, caplog):
    spool = tmp_path / "mlflow.spool.jsonl"
    inner = FlakySink()
    inner.down = True
    sink, _ = _wrap(inner, spool_path=str(spool))
    for step in range(3):
        sink.log_scalars(step, {U: float(step)})
    sink.close()
    assert "3 record(s) could not be delivered" in caplog.text and str(spool) in caplog.text
    assert len(spool.read_text().splitlines()) == 3


def test_partial_drain_rewrites_the_spool_to_the_remaining_records(tmp_path):
    spool = tmp_path / "spool.jsonl"

    class FailsAtStepTwo(FlakySink):
        def log_scalars(self, step, scalars, *, wall_time=None):
            if step == 2 and self.down:
                raise ConnectionError("step 2 still failing")
            MemorySink.log_scalars(self, step, scalars)

    inner = FailsAtStepTwo()
    inner.down = True
    sink, _ = _wrap(inner, spool_path=str(spool), retry_initial=0.0)
    sink.log_scalars(2, {U: 2.0})
    sink.log_scalars(3, {U: 3.0})
    assert sink.pending == 2 and inner.scalars == []
    inner.down = False
    sink.log_scalars(4, {U: 4.0})
    assert [s for s, _ in inner.scalars] == [2, 3, 4] and not spool.exists()


def test_replay_keeps_the_original_wall_time_of_each_record(tmp_path):
    class FlakyJsonl(JsonlSink):
        down = True

        def log_scalars(self, step, scalars, *, wall_time=None):
            if self.down:
                raise OSError("disk unavailable")
            super().log_scalars(step, scalars, wall_time=wall_time)

    path = tmp_path / "run.jsonl"
    inner = FlakyJsonl(path)
    sink, errors = _wrap(inner, retry_initial=0.0)
    sink.log_scalars(1, {U: -3.0}, wall_time=1000.0)
    sink.log_scalars(2, {U: -2.0}, wall_time=1001.0)
    inner.down = False
    sink.log_scalars(3, {U: -1.0}, wall_time=1002.0)
    sink.close()
    times = [json.loads(line)["time"] for line in path.read_text().splitlines()]
    assert times == [1000.0, 1001.0, 1002.0]
    assert read_jsonl(path)["scalars"][U] == [(1, -3.0), (2, -2.0), (3, -1.0)]
    assert len(errors) == 1 and isinstance(errors[0][1], OSError)


def test_a_malformed_record_is_dropped_and_does_not_block_the_rest(caplog):
    inner = MemorySink()
    sink, errors = _wrap(inner)
    sink.log_scalars(0, {U: -1.0})
    sink.log_scalars(1, {U: "not a number"})
    sink.log_scalars(2, {U: object()})
    sink.log_scalars(3, {U: -0.5})
    assert inner.history(U) == [(0, -1.0), (3, -0.5)]
    assert sink.dropped == 2 and sink.healthy and len(errors) == 1
    assert caplog.text.count("dropped it") == 1


def test_backlog_beyond_max_pending_drops_the_oldest_records():
    inner = FlakySink()
    inner.down = True
    sink, _ = _wrap(inner, max_pending=3, retry_initial=0.0)
    for step in range(5):
        sink.log_scalars(step, {U: float(step)})
    assert sink.pending == 3 and sink.dropped == 2
    inner.down = False
    sink.flush()
    assert [s for s, _ in inner.scalars] == [2, 3, 4]


def test_strict_mode_raises_the_inner_error_and_queues_nothing():
    inner = FlakySink()
    inner.down = True
    sink, errors = _wrap(inner, strict=True)
    with pytest.raises(ConnectionError, match="unreachable"):
        sink.log_scalars(0, {U: 1.0})
    assert sink.pending == 0 and errors == []


def test_a_raising_on_error_callback_never_reaches_the_caller(caplog):
    def broken_callback(name, exc):
        raise RuntimeError("callback bug")

    inner = FlakySink()
    inner.down = True
    sink = ResilientSink(inner, on_error=broken_callback)
    sink.log_scalars(0, {U: 1.0})
    assert sink.pending == 1 and "on_error callback" in caplog.text


@pytest.mark.parametrize("kwargs, message", [
    ({"retry_initial": -1.0}, "retry_initial"),
    ({"retry_initial": 5.0, "retry_max": 1.0}, "retry_max"),
    ({"max_pending": 0}, "max_pending"),
])
def test_invalid_settings_are_rejected_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResilientSink(MemorySink(), **kwargs)
