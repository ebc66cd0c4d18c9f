"""FaultReporter: once per part and kind until the part recovers, at most MAX_REPORTS_PER_PART, strict raises."""
import pytest

import spherewatch as sw
from spherewatch.config import MonitorConfig
from spherewatch.faults import MAX_REPORTS_PER_PART, RECOVER_AFTER, FaultReporter


def _reporter(**cfg):
    sent = []
    return FaultReporter(MonitorConfig(**cfg), sent.extend, lambda: 7), sent


def test_reported_once_per_part_and_kind_and_every_failure_counted():
    faults, sent = _reporter()
    for _ in range(5):
        faults.report("capture:x", ValueError("bad shape"))
    faults.report("capture:x", TypeError("bad dtype"))
    faults.report("sink:jsonl", OSError("disk full"))
    assert faults.counts == {"capture:x": 6, "sink:jsonl": 1}
    assert [(a.key, a.kind, a.step) for a in sent] == [
        ("spherewatch/monitor/capture:x", "fault", 7), ("spherewatch/monitor/capture:x", "fault", 7),
        ("spherewatch/monitor/sink:jsonl", "fault", 7)]
    assert sent[0].message.startswith("spherewatch: capture:x failed (ValueError: bad shape)")


def test_a_part_that_fails_every_other_time_never_recovers():
    faults, sent = _reporter()
    for _ in range(100):
        faults.report("capture:x", ValueError("bad"))
        faults.recovered("capture:x")
    assert len(sent) == 1


def test_recovery_after_successes_in_a_row_re_arms_up_to_the_cap():
    faults, sent = _reporter()
    for _ in range(3 * MAX_REPORTS_PER_PART):
        faults.report("capture:x", ValueError("bad"))
        for _ in range(RECOVER_AFTER):
            faults.recovered("capture:x")
    assert len(sent) == MAX_REPORTS_PER_PART
    assert "later failures are only counted" in sent[-1].message
    assert faults.counts["capture:x"] == 3 * MAX_REPORTS_PER_PART


def test_strict_raises_and_deferring_holds_the_first_error():
    faults, sent = _reporter(strict=True)
    with pytest.raises(sw.SpherewatchError, match="capture:x failed: ValueError: bad"):
        faults.report("capture:x", ValueError("bad"))
    with faults.deferring():
        faults.report("a", ValueError("first"))
        faults.report("b", ValueError("second"))
    with pytest.raises(sw.SpherewatchError, match="first"):
        faults.raise_deferred()
    faults.raise_deferred()  # once
    assert sent == []
