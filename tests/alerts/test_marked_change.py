"""A recipe change the user marks (``Monitor.mark_change``): no new alert while the geometry settles, one
``regime_change`` information event saying what moved, then the rules watch from the new level as at the start of a
run -- a collapse from there is alerted as usual; open alerts, NaN and checkpoints keep working across it."""
import json
import logging
import warnings

import pytest
import torch
from scenarios.traces import replay_records

import spherewatch as sw
from spherewatch.alerts import AlertEngine, default_rules
from spherewatch.errors import MonitorFault, SpherewatchError

P = "spherewatch/"
EVERY = 50


def _row(u, se=0.02):
    """One evaluation of a 32-wide embedding whose uniformity is ``u`` (the other spread metrics follow it)."""
    spread = (u + 0.0) / -3.0  # 0 collapsed .. ~0.9 spread out
    return {P + "uniformity": u, P + "uniformity_stderr": se,
            P + "effective_rank": 1.0 + 24.0 * spread, P + "effective_rank_stderr": 0.2,
            P + "mean_cosine": 1.0 - 0.95 * spread, P + "mean_cosine_stderr": 0.01}


def _run(us, marks=(), engine=None):
    """Feed uniformities at steps 1, 50, 100, ...; ``marks``: ``(step, what)`` marked just before the first sample at
    or after that step, settling for two intervals (the Monitor's default) -- a saved trace's replay."""
    engine = engine or AlertEngine(default_rules())
    trace = {"every_n_steps": EVERY, "changes": list(marks),
             "records": {1 if i == 0 else i * EVERY: _row(u) for i, u in enumerate(us)}}
    events = replay_records(trace, engine.update, engine.mark_change)
    return engine, [e for e in events if e.status == "fired"]


HEALTHY = [-2.2, -2.6, -2.62, -2.6, -2.61, -2.6, -2.62]  # steps 1..300
JUMP = [-0.9, -0.8, -0.82, -0.8, -0.81, -0.8, -0.82, -0.8]  # steps 350..700: a new level, held


def test_unmarked_a_jump_that_holds_is_a_collapse_alert_marked_it_is_one_information_event():
    _, unmarked = _run(HEALTHY + JUMP)
    assert unmarked and all(a.kind == "collapse" for a in unmarked) and unmarked[0].step == 350
    engine, marked = _run(HEALTHY + JUMP, marks=[(301, "stronger augmentations")])
    assert [(a.rule, a.kind, a.severity, a.step) for a in marked] == [("marked_change", "regime_change", "info", 450)]
    msg = marked[0].message
    assert msg.startswith("the recipe changed at step 301 (stronger augmentations) (tap 'embeddings'); from step 300 "
                          "to step 450: uniformity -2.62 -> -0.82, effective_rank")
    assert "mean_cosine" in msg and "a collapse from here is alerted as usual" in msg
    assert engine.marked_change is None  # the window closed
    assert marked[0].open_severity in (None, "ok")
    assert "[spherewatch info] step 450: the recipe changed at step 301" in str(marked[0])


def test_after_the_window_a_collapse_from_the_new_level_is_alerted_as_usual():
    collapse = [-0.3, -0.08, -0.03, -0.02]  # steps 750..900: from the new level to complete collapse
    _, alerts = _run(HEALTHY + JUMP + collapse, marks=[(301, "")])
    collapse_alerts = [a for a in alerts if a.kind == "collapse"]
    assert collapse_alerts and min(a.step for a in collapse_alerts) == 750
    assert any(a.severity == "critical" for a in collapse_alerts)
    assert "(tap 'embeddings'); from step 300" in alerts[0].message  # no "()" for an empty `what`


def test_an_alert_open_when_the_change_is_marked_is_still_judged_and_resolves_in_the_window():
    sick = [-2.2, -2.6, -2.62, -2.6, -0.5, -0.4, -0.45]  # collapse alerts open at 200
    engine, before = _run(sick)
    assert engine.active and any(a.kind == "collapse" for a in before)
    # the user fixes it (a lower learning rate) and marks the change; the spread comes back within the window
    engine, events = _run(sick + [-2.5, -2.6, -2.6, -2.6, -2.62, -2.6, -2.6, -2.61], marks=[(351, "lr / 10")])
    resolved = [e for e in engine.active]
    assert resolved == []  # every open alert resolved (3 clear samples) even though no new alert could start
    assert [e.rule for e in events if e.kind == "regime_change"] == ["marked_change"]


def test_non_finite_values_are_reported_inside_the_window():
    engine, _ = _run(HEALTHY, marks=[(301, "")])
    out = engine.update(350, {**_row(-2.6), P + "effective_rank": float("nan")})
    assert [(a.rule, a.severity) for a in out if a.status == "fired"] == [("nonfinite", "critical")]


def test_a_second_mark_inside_the_window_extends_it_and_both_are_named():
    engine, events = _run(HEALTHY + JUMP, marks=[(301, "augmentations x2"), (349, "batch 256")])
    info = [a for a in events if a.kind == "regime_change"]
    assert [a.step for a in info] == [450]  # 349 + 100 -> the first evaluation from step 449
    assert "the recipe changed at step 301 (augmentations x2; batch 256)" in info[0].message


def test_a_checkpoint_inside_the_window_resumes_it():
    engine, first = _run(HEALTHY + JUMP[:1], marks=[(301, "aug")])
    state = json.loads(json.dumps(engine.state_dict(), allow_nan=False))
    resumed = AlertEngine(default_rules())
    resumed.load_state_dict(state)
    assert resumed.marked_change == engine.marked_change and resumed.marked_change["step"] == 301
    rest = []
    for i, u in enumerate(JUMP[1:], start=len(HEALTHY) + 1):
        rest += [e for e in resumed.update(i * EVERY, _row(u)) if e.status == "fired"]
    _, whole = _run(HEALTHY + JUMP, marks=[(301, "aug")])
    assert [(a.rule, a.step, a.message) for a in first + rest] == [(a.rule, a.step, a.message) for a in whole]


@pytest.mark.parametrize("bad, fix", [({"step": -1}, "`step` must be an int >= 0"),
                                      ({"step": 3.5}, "`step` must be an int >= 0"),
                                      ({"step": 10, "settle_steps": 0}, "`settle_steps` must be an int >= 1")])
def test_bad_arguments_name_the_value_and_the_fix(bad, fix):
    with pytest.raises(ValueError, match=fix.replace("(", r"\(")):
        AlertEngine(default_rules()).mark_change(**{"settle_steps": 100, **bad})


def _embeddings(step, g):
    z = torch.randn(256, 32, generator=g)
    return z * 0.05 + torch.ones(32) if step >= 41 else z  # from step 41 the batch sits in one corner


def test_the_monitor_marks_the_next_step_settles_two_intervals_and_writes_the_event_to_the_sinks(caplog):
    mon = sw.Monitor(sinks=["memory"], every_n_steps=10, warn=False)
    g = torch.Generator().manual_seed(0)
    with caplog.at_level(logging.INFO, logger="spherewatch"):
        for step in range(1, 101):
            if step == 41:
                mon.mark_change("a new corner")  # between step(40) and step(41): from step 41
            mon.observe(_embeddings(step, g))
            mon.step(step)
    mon.close()
    assert "recipe change marked at step 41 (a new corner): no new alert before step 61" in caplog.text
    events = [(a.rule, a.kind, a.severity, a.step) for a in mon.alerts if a.status == "fired"]
    # the change collapsed the batch completely: watched from step 70 as at the start of a run, it is alerted at
    # its second sample (mean cosine 0.998) and is critical one sample later
    assert events[0] == ("marked_change", "regime_change", "info", 70)
    assert [e[:3] for e in events[1:]] == [("mean_cosine_collapse", "collapse", "warning"),
                                           ("uniformity_collapse", "collapse", "critical")]
    sink = mon.sink("memory")
    assert [(a.rule, a.step) for a in sink.alerts][:1] == [("marked_change", 70)]


def test_a_bad_mark_is_a_monitor_fault_that_training_survives_and_strict_raises(caplog):
    mon = sw.Monitor(sinks=["memory"], every_n_steps=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon.mark_change("x", step=-5)
    assert [str(w.message) for w in caught if issubclass(w.category, MonitorFault)] == [
        "spherewatch: mark_change failed (ValueError: mark_change: `step` must be an int >= 0 (the first step of the "
        "new recipe), got -5); the change was not marked. Training continues. (step 0)"]
    assert mon.faults == {"mark_change": 1}
    mon.close()
    strict = sw.Monitor(sinks=["memory"], every_n_steps=10, warn=False, strict=True)
    with pytest.raises(SpherewatchError, match="settle_steps"):
        strict.mark_change("x", settle_steps=0)
    strict.close()
