"""Issue 22 row 13: `observe(None)` inside a training loop is a fault reported once, not an exception raised into
the loop at every step; `strict=True` raises it. (`z` and `views=` together is a programming error, raised at once:
tests/metrics/test_lidar_monitor.py.)"""
from __future__ import annotations

import pytest

from spherewatch.errors import SpherewatchError


def test_observe_without_embeddings_is_reported_once_and_training_goes_on(make_monitor, spherewatch_logs):
    mon = make_monitor(sinks=("memory",), every_n_steps=2)
    for step in range(6):
        mon.observe(None)
        mon.step(step)
    assert mon.faults == {"capture:embeddings": 6}
    reported = [r.getMessage() for r in spherewatch_logs.records if "capture:embeddings failed" in r.getMessage()]
    assert len(reported) == 1 and "pass `z` (N, D)" in reported[0]


def test_strict_raises_the_bad_call(make_monitor):
    mon = make_monitor(sinks=("memory",), strict=True)
    with pytest.raises(SpherewatchError, match=r"observe\(\) got no embeddings"):
        mon.observe(None)
