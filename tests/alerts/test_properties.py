"""Property-based checks: cooldown and hysteresis never double-fire; the dispatcher delivers exactly once."""
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spherewatch.alerts import (
    Alert,
    AlertDispatcher,
    AlertEngine,
    CallableChannel,
    DegradationRule,
    NonFiniteRule,
    ThresholdRule,
)
from spherewatch.alerts.engine import RESOLVE_AFTER

KEY = "spherewatch/m"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(
    st.floats(min_value=-10, max_value=10, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), -float("inf")]),
)
sequences = st.lists(values, min_size=1, max_size=60)
common = {
    "warmup": st.integers(0, 3), "patience": st.integers(1, 3), "cooldown": st.integers(0, 5),
    "hysteresis": st.floats(0, 2, allow_nan=False),
}


def _fires(rule, seq):
    """Where a new alert opened (reminders of an open one and resolved events are not openings)."""
    engine = AlertEngine([rule])
    return [i for i, v in enumerate(seq)
            if any(a.status == "fired" and a.count == 1 for a in engine.update(i, {KEY: v}))]


def _check_fire_spacing(rule, seq, fires, breach, rearm, counted):
    """Shared invariants, checked against an independent reading of the sequence.

    breach(i) / rearm(i): whether sample i breaches / is re-armed (None for samples that do not count).
    counted: indices of samples that count (finite, or all for non-finite rules), warm-up included.
    """
    pos = {i: k for k, i in enumerate(counted)}
    for f in fires:
        assert pos[f] >= rule.warmup, "fired during warm-up"
        run = [i for i in counted if i <= f][-rule.patience:]
        assert len(run) == rule.patience and all(breach(i) for i in run), "fired without `patience` breaches"
    for a, b in zip(fires, fires[1:]):
        assert pos[b] - pos[a] > rule.cooldown, "fired again inside the cooldown"
        between = [rearm(i) for i in counted if a < i < b]
        resolved = any(all(between[k:k + RESOLVE_AFTER]) for k in range(len(between) - RESOLVE_AFTER + 1))
        assert resolved, "opened again without RESOLVE_AFTER clear samples in a row (hysteresis)"


@SETTINGS
@given(seq=sequences, below=st.floats(-5, 5), **common)
def test_threshold_never_double_fires(seq, below, warmup, patience, cooldown, hysteresis):
    rule = ThresholdRule(metric="m", below=below, warmup=warmup, patience=patience, cooldown=cooldown,
                         hysteresis=hysteresis)
    counted = [i for i, v in enumerate(seq) if math.isfinite(v)]
    fires = _fires(rule, seq)
    _check_fire_spacing(rule, seq, fires, lambda i: seq[i] < below, lambda i: seq[i] >= below + hysteresis, counted)


@SETTINGS
@given(seq=sequences, fraction=st.floats(0.05, 1.0), direction=st.sampled_from(["rise", "fall"]), **common)
def test_degradation_never_double_fires(seq, fraction, direction, warmup, patience, cooldown, hysteresis):
    rule = DegradationRule(metric="m", direction=direction, fraction=fraction, warmup=warmup, patience=patience,
                           cooldown=cooldown, hysteresis=hysteresis)
    counted = [i for i, v in enumerate(seq) if math.isfinite(v)]
    bad = 1.0 if direction == "rise" else -1.0
    # independent reference: best of the post-warm-up samples before i
    best = {}
    current = None
    for k, i in enumerate(counted):
        if k < warmup:
            continue
        best[i] = current
        v = seq[i]
        current = v if current is None or bad * (v - current) < 0 else current

    def drop_and_allowed(i):
        ref = best.get(i)
        if ref is None:
            return None
        return bad * (seq[i] - ref), fraction * abs(ref), abs(ref)

    def breach(i):
        d = drop_and_allowed(i)
        return d is not None and d[0] > d[1]

    def rearm(i):
        d = drop_and_allowed(i)
        return d is None or d[0] <= d[1] - hysteresis * d[2]

    fires = _fires(rule, seq)
    _check_fire_spacing(rule, seq, fires, breach, rearm, counted)


@SETTINGS
@given(seq=sequences, **common)
def test_nonfinite_never_double_fires(seq, warmup, patience, cooldown, hysteresis):
    rule = NonFiniteRule(warmup=warmup, patience=patience, cooldown=cooldown, hysteresis=hysteresis)
    fires = _fires(rule, seq)
    _check_fire_spacing(rule, seq, fires, lambda i: not math.isfinite(seq[i]), lambda i: math.isfinite(seq[i]),
                        list(range(len(seq))))


alerts_strategy = st.lists(
    st.builds(Alert, rule=st.sampled_from(["a", "b"]), key=st.just(KEY), value=st.floats(allow_nan=False),
              step=st.integers(0, 10**6), severity=st.sampled_from(["info", "warning", "critical"])),
    max_size=30,
)


@SETTINGS
@given(batches=st.lists(alerts_strategy, max_size=5), n_good=st.integers(1, 4),
       failures=st.sets(st.integers(0, 150)))
def test_dispatcher_delivers_every_alert_to_every_channel_once(batches, n_good, failures):
    received = [[] for _ in range(n_good)]
    attempts = []
    errors = []

    def flaky(alert):
        attempts.append(alert)
        if len(attempts) - 1 in failures:
            raise RuntimeError("channel down")

    good = [CallableChannel(r.append) for r in received]
    dispatcher = AlertDispatcher(good[:1] + [CallableChannel(flaky)] + good[1:],
                                 on_error=lambda ch, err: errors.append(err))
    for batch in batches:
        dispatcher.dispatch(batch)
    sent = [a for batch in batches for a in batch]
    for r in received:
        assert r == sent and all(x is y for x, y in zip(r, sent))
    assert attempts == sent  # the failing channel is tried exactly once per alert too
    assert len(errors) == (1 if any(i < len(sent) for i in failures) else 0)  # reported once


@SETTINGS
@given(seq=st.lists(st.one_of(st.floats(-5, 5), st.just(float("nan"))), max_size=40))
def test_every_fired_alert_reaches_every_channel_once(seq):
    engine = AlertEngine([ThresholdRule(metric="m", below=0.0, hysteresis=0.5), NonFiniteRule()])
    got_a, got_b = [], []
    dispatcher = AlertDispatcher([CallableChannel(got_a.append), CallableChannel(got_b.append)])
    fired = []
    for step, v in enumerate(seq):
        alerts = engine.update(step, {KEY: v})
        fired += alerts
        dispatcher.dispatch(alerts)
    assert got_a == fired and got_b == fired
