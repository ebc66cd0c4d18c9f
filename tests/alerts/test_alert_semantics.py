"""What a user sees of an alert through the Monitor: one delivery per channel, faults apart from collapse alerts
and never at step -1, escalation raised from step() in user code, resolved events, family-aware advice."""
import logging
import warnings

import pytest
import torch

import spherewatch as sw

COLLAPSE_RULE = {"kind": "threshold", "metric": "mean_cosine", "above": 0.9, "name": "parallel"}


def _collapsed(n=32, d=8):
    return torch.ones(n, d) + 1e-3 * torch.randn(n, d)


def _healthy(n=32, d=8):
    return torch.randn(n, d)


def _monitor(**kw):
    kw.setdefault("rules", [COLLAPSE_RULE])
    return sw.Monitor(every_n_steps=1, sinks=("memory",), **kw)


def test_an_alert_is_one_collapse_warning_pointing_at_the_users_step_call(caplog):
    mon = _monitor()
    mon.observe(_collapsed())
    with caplog.at_level(logging.DEBUG, logger="spherewatch"), warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        fired = mon.step(0)  # the warning points here
    assert [a.rule for a in fired] == ["parallel"]
    assert [w.category for w in got] == [sw.CollapseWarning]
    assert got[0].filename == __file__
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # the warning is the one delivery
    mon.close()


def test_warn_false_is_one_log_line_and_no_warning(caplog):
    mon = _monitor(warn=False)
    mon.observe(_collapsed())
    with caplog.at_level(logging.INFO, logger="spherewatch"), warnings.catch_warnings():
        warnings.simplefilter("error")
        mon.step(0)
    assert [r.levelno for r in caplog.records if "parallel" in r.getMessage() or "mean_cosine" in r.getMessage()] == [
        logging.WARNING]
    mon.close()


def test_escalated_collapse_warning_raises_from_step_after_the_alert_was_recorded():
    mon = _monitor()
    mon.observe(_collapsed())
    with warnings.catch_warnings():
        warnings.simplefilter("error", sw.CollapseWarning)
        with pytest.raises(sw.CollapseWarning, match="mean_cosine"):
            mon.step(0)
    assert [a.rule for a in mon.sink("memory").alerts] == ["parallel"]  # written before it was raised
    assert [a.rule for a in mon.alerts] == ["parallel"]
    assert mon.global_step == 0  # the schedule moved on: the next step works normally
    mon.observe(_collapsed())
    assert mon.step(1) == []  # still open: not re-notified
    mon.close()


def test_faults_are_monitor_faults_at_a_real_step_never_minus_one():
    got = []
    mon = _monitor(on_alert=got.append)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        mon.observe(torch.randn(4, 3, 5))  # before the first step(): the step being trained is 0
        mon.step(0)
        for s in range(1, 5):
            mon.observe(_healthy())
            mon.step(s)
        mon.observe(torch.ones(8, 3, dtype=torch.long))  # a second kind of failure, at step 5
        mon.step(5)
    faults = [a for a in got if a.kind == "fault"]
    assert [(a.rule, a.step) for a in faults] == [("monitor_fault", 0), ("monitor_fault", 5)]
    assert all(a.step >= 0 for a in got)
    assert {w.category for w in warned} == {sw.MonitorFault}
    assert not issubclass(sw.MonitorFault, sw.CollapseWarning)
    assert mon.alerts == []  # faults are not collapse alerts
    mon.close()


def test_escalating_collapse_warnings_leaves_faults_alone():
    mon = _monitor()
    with warnings.catch_warnings():
        warnings.simplefilter("error", sw.CollapseWarning)
        warnings.simplefilter("ignore", sw.MonitorFault)
        mon.observe(torch.randn(7))
        mon.step(0)
    assert mon.faults == {"capture:embeddings": 1}
    mon.close()


def test_alerts_resolve_and_sinks_get_the_resolved_event(caplog):
    got, returned = [], []
    mon = _monitor(warn=False, on_alert=got.append)
    batches = [_collapsed()] * 3 + [_healthy()] * 3
    with caplog.at_level(logging.INFO, logger="spherewatch"):
        for s, z in enumerate(batches):
            mon.observe(z)
            returned += mon.step(s)
    assert [(a.status, a.step) for a in returned] == [("fired", 0)]  # user code never acts on a resolution
    assert [(a.status, a.step) for a in got] == [("fired", 0)]
    assert [(a.status, a.step) for a in mon.alerts] == [("fired", 0), ("resolved", 5)]
    assert [r.levelno for r in caplog.records if "resolved" in r.getMessage()] == [logging.INFO]
    assert [(a.status, a.count, a.open_severity) for a in mon.sink("memory").alerts] == [
        ("fired", 1, "warning"), ("resolved", 3, "ok")]
    mon.close()


def test_advice_follows_the_configured_loss_family():
    texts = {}
    rule = {"kind": "threshold", "metric": "uniformity", "above": -0.5, "name": "u"}
    for family in (None, "non_contrastive"):
        mon = _monitor(rules=[rule], loss_family=family, warn=False)
        mon.observe(_collapsed())
        (alert,) = mon.step(0)
        texts[family] = alert.message
        mon.close()
    assert "stop-gradient" not in texts[None] and "stop-gradient" in texts["non_contrastive"]
