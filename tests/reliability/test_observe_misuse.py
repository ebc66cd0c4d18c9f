"""Issue 22 row 13: `observe(None)` (or `z` and `views=` together) inside a training loop is a fault reported once,
not an exception raised into the loop at every step; `strict=True` raises it."""
from __future__ import annotations

import pytest
import torch

from spherewatch.errors import SpherewatchError


@pytest.mark.parametrize("call", ["none", "both"])
def test_a_bad_observe_call_is_reported_once_and_training_goes_on(call, make_monitor, spherewatch_logs):
    mon = make_monitor(sinks=("memory",), every_n_steps=2)
    z = torch.randn(16, 4)
    for step in range(6):
        if call == "none":
            mon.observe(None)
        else:
            mon.observe(z, views=torch.stack([z, z], 1))
        mon.step(step)
    assert mon.faults == {"capture:embeddings": 6}
    reported = [r.getMessage() for r in spherewatch_logs.records if "capture:embeddings failed" in r.getMessage()]
    assert len(reported) == 1 and "pass `z` (N, D)" in reported[0]


def test_strict_raises_the_bad_call(make_monitor):
    mon = make_monitor(sinks=("memory",), strict=True)
    with pytest.raises(SpherewatchError, match=r"observe\(\) got no embeddings"):
        mon.observe(None)
