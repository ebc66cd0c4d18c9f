"""Bounded by construction: 10,000 steps of persistent bad input (every other batch NaN / empty / 3-D / int / on
``meta``), evaluated at every step, give a handful of alert records, log lines and warnings, not thousands."""
import logging
import warnings

import pytest
import torch

import spherewatch as sw
from spherewatch.alerting import HISTORY_LIMIT
from spherewatch.faults import MAX_REPORTS_PER_PART

STEPS = 10_000


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one intra-op thread (two spinning OpenMP threads on a loaded machine cost more than the op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bad(k):
    kind = k % 5
    if kind == 0:
        return torch.full((8, 4), float("nan"))
    if kind == 1:
        return torch.empty(0, 4)
    if kind == 2:
        return torch.randn(2, 4, 4)
    if kind == 3:
        return torch.ones(8, 4, dtype=torch.long)
    return torch.randn(8, 4, device="meta")


def test_ten_thousand_steps_of_persistent_bad_input_stay_bounded(caplog):
    torch.manual_seed(0)
    good = torch.randn(8, 4)
    mon = sw.Monitor(every_n_steps=1, sinks=("memory",), metrics=("mean_cosine", "nonfinite_fraction"))
    with caplog.at_level(logging.INFO, logger="spherewatch"), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        for s in range(STEPS):
            mon.observe(_bad(s // 2) if s % 2 else good)
            mon.step(s)
    records = mon.sink("memory").alerts
    # one open nonfinite alert per key, never resolved (the condition flaps); faults once per part and kind
    assert len(records) <= 10, [(a.rule, a.key, a.step) for a in records]
    assert len(mon.alerts) <= 10 and len(mon.alerts) <= HISTORY_LIMIT
    faults = [w for w in warned if w.category is sw.MonitorFault]
    collapse = [w for w in warned if w.category is sw.CollapseWarning]
    assert 1 <= len(faults) <= 3 * MAX_REPORTS_PER_PART and 1 <= len(collapse) <= 10
    assert len(caplog.records) <= 20, [r.getMessage() for r in caplog.records]
    assert sum(mon.faults.values()) >= STEPS // 2 * 3 // 5 - 5  # every failure is still counted
    mon.close()


def test_history_is_bounded_while_sinks_keep_everything():
    mon = sw.Monitor(every_n_steps=1, sinks=("memory",), warn=False,
                     rules=[{"kind": "threshold", "metric": "mean_cosine", "above": 0.9, "name": "p", "cooldown": 1}])
    collapsed = torch.ones(8, 4)
    for s in range(HISTORY_LIMIT + 200):
        mon.observe(collapsed)
        mon.step(s)
    assert len(mon.sink("memory").alerts) == HISTORY_LIMIT + 200  # a reminder per sample with cooldown=1
    assert len(mon.alerts) == HISTORY_LIMIT and mon.alerts[-1].count == HISTORY_LIMIT + 200
    mon.close()
