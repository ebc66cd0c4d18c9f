"""AlertEngine: when each rule kind fires (table-driven), state machine, references, non-finite, resume."""
import json
import math

import pytest

from spherewatch.alerts import (
    AlertEngine,
    ApproachRule,
    DegradationRule,
    LevelRule,
    NonFiniteRule,
    RegimeRule,
    ThresholdRule,
    TrendRule,
    default_rules,
)

NAN, INF = float("nan"), float("inf")
KEY = "spherewatch/m"


def fired_at(rule, values, key=KEY):
    """Feed values at steps 0, 1, 2, ... and return the steps at which `rule` fired."""
    engine = AlertEngine([rule])
    steps = []
    for step, v in enumerate(values):
        for alert in engine.update(step, {key: v}):
            assert alert.rule == rule.name and alert.key == key and alert.step == step
            if alert.status == "fired":  # openings and reminders; "resolved" events are tested below
                steps.append(step)
    return steps


def below(**kw):
    return ThresholdRule(metric="m", below=1.0, **kw)


def fall(**kw):
    return DegradationRule(metric="m", direction="fall", fraction=0.5, **kw)


def rise(**kw):
    return DegradationRule(metric="m", direction="rise", fraction=0.5, **kw)


CASES = [
    # --- threshold
    ("threshold fires at the first breach", below(), [2, 0.5, 2], [1]),
    ("threshold above", ThresholdRule(metric="m", above=5.0), [1, 6, 6, 1, 1, 1, 7], [1, 6]),
    ("threshold band", ThresholdRule(metric="m", above=5.0, below=1.0), [2, 0, 2, 2, 2, 6], [1, 5]),
    ("threshold at the limit does not fire", below(), [1.0, 1.0], []),
    ("patience needs consecutive breaches", below(patience=2), [2, 0.5, 2, 0.5, 0.5, 0.5], [4]),
    ("patience 3", below(patience=3), [0.5, 0.5, 2, 0.5, 0.5, 0.5, 0.5], [5]),
    ("warmup ignores the first samples", below(warmup=2), [0.5, 0.5, 0.5, 2], [2]),
    ("warmup plus patience", below(warmup=1, patience=2), [0.5, 0.5, 0.5, 0.5], [2]),
    ("stays firing while breaching", below(), [0.5, 0.4, 0.3, 0.2], [0]),
    ("resolves after three clear samples, then fires anew", below(), [0.5, 1.2, 1.2, 1.2, 0.5], [0, 4]),
    ("one clear sample does not resolve: a flapping condition is one alert", below(), [0.5, 1.2, 0.5, 2, 0.5], [0]),
    ("hysteresis band keeps it firing", below(hysteresis=0.5), [0.5, 1.2, 1.2, 1.2, 1.6, 1.6, 1.6, 0.5], [0, 7]),
    ("hysteresis exactly at the margin clears", below(hysteresis=0.5), [0.5, 1.5, 1.5, 1.5, 0.5], [0, 4]),
    ("cooldown: a reminder every cooldown samples while open", below(cooldown=2), [0.5] * 7, [0, 2, 4, 6]),
    ("cooldown 0: no reminder", below(cooldown=0), [0.5] * 7, [0]),
    ("cooldown blocks a re-open", below(cooldown=5), [0.5, 2, 2, 2, 0.5, 0.5, 0.5], [0, 6]),
    ("cooldown and patience", below(cooldown=3, patience=2), [0.5, 0.5, 2, 2, 2, 0.5, 0.5], [1, 6]),
    # --- degradation, fall (effective rank)
    ("fall vs best", fall(), [10, 8, 12, 7, 5.9], [4]),
    ("fall not at exactly half", fall(), [10, 5.0], []),
    ("fall vs baseline", fall(reference="baseline", baseline_samples=3), [10, 8, 12, 5.5, 4.9], [4]),
    ("fall vs best fires earlier than baseline", fall(), [10, 8, 12, 5.5, 4.9], [3]),
    ("baseline cannot fire while it is collected", fall(reference="baseline", baseline_samples=3),
     [10, 1, 1, 1], [3]),
    ("warm-up values do not set best", fall(warmup=2), [100, 100, 10, 9, 4], [4]),
    ("without warm-up the first values set best", fall(), [100, 100, 10, 9, 4], [2]),
    ("fall hysteresis is relative to the reference", fall(hysteresis=0.2), [10, 4, 6, 4, 7, 7, 7, 4], [1, 7]),
    ("fall patience", fall(patience=2), [10, 4, 6, 4, 4], [4]),
    ("fall min_drop", fall(min_drop=3.0), [4, 1.9, 0.9], [2]),
    # --- degradation, rise (uniformity, negative)
    ("rise vs best", rise(), [-3.4, -3.6, -2.0, -1.7], [3]),
    ("rise to complete collapse", rise(), [-3.9, -3.9, 0.0], [2]),
    ("rise tiny reference fires on noise", rise(), [-0.02, -0.01, 0.0], [2]),
    ("rise min_drop suppresses noise", rise(min_drop=0.05), [-0.02, -0.01, 0.0], []),
    ("rise vs baseline", rise(reference="baseline", baseline_samples=2), [-4.0, -2.0, -2.5, -1.4], [3]),
    # --- trend
    ("trend rise", TrendRule(metric="m", direction="rise", slope=0.5, ewma=0.5), [0, 0.2, 0.4, 1.4, 2.4], [3]),
    ("trend fall", TrendRule(metric="m", direction="fall", slope=0.5, ewma=0.5), [0, -0.2, -0.4, -1.4], [3]),
    ("trend ignores the good direction", TrendRule(metric="m", direction="fall", slope=0.5), [0, 1, 2, 3], []),
    ("trend hysteresis", TrendRule(metric="m", direction="rise", slope=0.5, ewma=0.5, hysteresis=0.3),
     [0, 1, 1.3, 1.3, 2.3], [1]),
    ("trend resolves", TrendRule(metric="m", direction="rise", slope=0.5, ewma=0.5), [0, 1, 1, 1, 1, 2], [1, 5]),
    # --- non-finite
    ("nonfinite fires on NaN and Inf", NonFiniteRule(), [1, NAN, NAN, 1, 1, 1, INF, -INF], [1, 6]),
    ("nonfinite on every other sample is one open alert", NonFiniteRule(), [NAN, 1] * 50, [0]),
    ("nonfinite cooldown", NonFiniteRule(cooldown=5), [NAN, 1, NAN, 1, NAN, 1, NAN], [0, 6]),
    ("nonfinite patience", NonFiniteRule(patience=2), [NAN, 1, NAN, NAN], [3]),
    ("nonfinite warmup", NonFiniteRule(warmup=1), [NAN, NAN], [1]),
    # --- non-finite values are invisible to the other rules
    ("NaN does not break a patience run", below(patience=2), [0.5, NAN, 0.5], [2]),
    ("NaN does not count as warm-up", below(warmup=1), [NAN, 0.5, 0.5], [2]),
    ("Inf never becomes best", rise(), [-3.0, -INF, -1.4], [2]),
    ("NaN does not re-arm", below(), [0.5, NAN, 0.5], [0]),
    ("Inf does not breach a threshold", ThresholdRule(metric="m", above=1.0), [INF, 0, INF], []),
]


@pytest.mark.parametrize("title, rule, values, expected", CASES, ids=[c[0] for c in CASES])
def test_rule_fires_at_the_expected_samples(title, rule, values, expected):
    assert fired_at(rule, values) == expected


def test_state_machine_goes_ok_pending_firing_ok():
    engine = AlertEngine([below(patience=2, hysteresis=0.5)])
    seen = []
    for step, v in enumerate([2, 0.5, 0.5, 0.4, 1.2, 1.6, 1.6, 1.6]):
        engine.update(step, {KEY: v})
        seen.append(engine.status("m_threshold", KEY))
    assert seen == ["ok", "pending", "firing", "firing", "firing", "firing", "firing", "ok"]
    assert engine.status("m_threshold", "spherewatch/other/m") == "ok"


def test_active_lists_firing_pairs_until_they_resolve():
    engine = AlertEngine([below()])
    (alert,) = engine.update(0, {KEY: 0.5})
    assert engine.active == {f"m_threshold:{KEY}": alert}
    engine.update(1, {KEY: 0.1})
    assert engine.active == {f"m_threshold:{KEY}": alert}  # still the alert that fired
    for step in (2, 3, 4):
        engine.update(step, {KEY: 3.0})
    assert engine.active == {}


def test_a_persisting_condition_is_one_open_alert_with_a_count_and_a_resolved_event():
    engine = AlertEngine([below(cooldown=4, severity="critical")])
    events = []
    for step, v in enumerate([0.5] * 9 + [2.0] * 3):
        events += engine.update(step, {KEY: v})
    assert [(a.step, a.status, a.count) for a in events] == [
        (0, "fired", 1), (4, "fired", 5), (8, "fired", 9), (11, "resolved", 9)]
    assert [a.open_severity for a in events] == ["critical", "critical", "critical", "ok"]
    assert "resolved at step 11" in events[-1].message and "opened at step 0" in events[-1].message
    assert engine.status("m_threshold", KEY) == "ok"


def test_open_severity_is_the_worst_open_alert():
    engine = AlertEngine([below(name="soft", severity="warning"), ThresholdRule(metric="m", below=0.2,
                                                                                severity="critical")])
    (w,) = engine.update(0, {KEY: 0.5})
    assert w.open_severity == "warning"
    (c,) = engine.update(1, {KEY: 0.1})
    assert c.open_severity == "critical"
    events = []
    for step in (2, 3, 4):
        events += engine.update(step, {KEY: 0.5})  # the critical one clears, the warning stays open
    assert [(a.rule, a.status, a.open_severity) for a in events] == [("m_threshold", "resolved", "warning")]


def test_advice_is_neutral_unless_the_loss_family_is_known():
    rule = DegradationRule(metric="uniformity", direction="rise", fraction=0.5)
    texts = {}
    for family in (None, "contrastive", "non_contrastive"):
        engine = AlertEngine([rule], loss_family=family)
        for step, u in enumerate([-3.5, -3.5, -0.5]):
            fired = engine.update(step, {"spherewatch/uniformity": u})
        texts[family] = fired[0].message
    assert "stop-gradient" not in texts[None] and "temperature" not in texts[None]
    assert "temperature" in texts["contrastive"] and "stop-gradient" not in texts["contrastive"]
    assert "stop-gradient" in texts["non_contrastive"]
    with pytest.raises(ValueError, match="loss_family"):
        AlertEngine([rule], loss_family="simclr")


def test_keys_are_tracked_separately_and_matched_by_tap_and_metric():
    rule = ThresholdRule(metric="effective_rank", below=4, tap="enc*")
    engine = AlertEngine([rule])
    fired = engine.update(
        7,
        {
            "spherewatch/encoder/effective_rank": 2.0,
            "spherewatch/encoder2/effective_rank": 3.0,
            "spherewatch/effective_rank": 1.0,  # tap does not match (the default tap, "embeddings")
            "spherewatch/embeddings/effective_rank": 1.0,  # the same, in the tap key scheme
            "spherewatch/encoder/effective_rank_centered": 1.0,  # metric does not match
            "other/encoder/effective_rank": 1.0,  # prefix does not match
            "spherewatch/monitor/effective_rank": 1.0,  # a reserved segment: not a metric key
            "spherewatch/encoder3/effective_rank": "n/a",  # not a number
        },
    )
    assert [a.key for a in fired] == ["spherewatch/encoder/effective_rank", "spherewatch/encoder2/effective_rank"]


def test_custom_prefix_and_metric_with_subpath():
    engine = AlertEngine([ThresholdRule(metric="norm_stats/mean", above=10)], prefix="sw/")
    assert engine.update(0, {"sw/embeddings/norm_stats/mean": 11.0})[0].key == "sw/embeddings/norm_stats/mean"
    assert engine.update(1, {"spherewatch/norm_stats/mean": 11.0}) == []


def test_alerts_are_returned_in_rule_order():
    engine = AlertEngine([NonFiniteRule(), ThresholdRule(metric="*", below=0)])
    fired = engine.update(0, {"spherewatch/a/x": -1.0, "spherewatch/a/y": NAN})
    assert [(a.rule, a.key) for a in fired] == [("nonfinite", "spherewatch/a/y"), ("any_threshold", "spherewatch/a/x")]


def test_alert_carries_rule_severity_action_value_and_step():
    rule = ThresholdRule(metric="m", below=1.0, severity="critical", action="stop", name="too_low")
    (alert,) = AlertEngine([rule]).update(42, {KEY: 0.25})
    assert (alert.rule, alert.severity, alert.action, alert.value, alert.step) == ("too_low", "critical", "stop", 0.25, 42)


def test_degradation_message_says_what_happened_and_what_to_check():
    engine = AlertEngine([DegradationRule(metric="uniformity", direction="rise", fraction=0.5)])
    key = "spherewatch/uniformity"
    alerts = []
    for step, v in [(100, -3.1), (200, -3.42), (300, -2.5), (400, -0.91)]:
        alerts += engine.update(step, {key: v})
    (alert,) = alerts
    assert alert.message.startswith("uniformity rose from -3.42 (best, step 200) to -0.91 (73% worse) at step 400")
    assert "losing spread on the sphere" in alert.message and "possible collapse" in alert.message
    assert "Check" in alert.message


def test_baseline_message_names_the_baseline_steps():
    rule = DegradationRule(metric="effective_rank", direction="fall", reference="baseline", baseline_samples=2)
    engine = AlertEngine([rule])
    key = "spherewatch/effective_rank"
    alerts = []
    for step, v in [(10, 100.0), (20, 80.0), (30, 30.0)]:
        alerts += engine.update(step, {key: v})
    assert "fell from 90 (baseline, mean of steps 10-20) to 30" in alerts[0].message
    assert "dimensional collapse" in alerts[0].message


def test_nonfinite_and_trend_messages():
    (nan_alert,) = AlertEngine([NonFiniteRule()]).update(5, {KEY: NAN})
    assert "m is NaN at step 5" in nan_alert.message and "learning rate" in nan_alert.message
    (inf_alert,) = AlertEngine([NonFiniteRule()]).update(5, {KEY: -INF})
    assert "-Inf" in inf_alert.message
    engine = AlertEngine([TrendRule(metric="m", direction="fall", slope=0.5)])
    engine.update(0, {KEY: 3.0})
    (trend,) = engine.update(1, {KEY: 2.0})
    assert "m is falling fast: smoothed change -1 per sample (limit 0.5)" in trend.message
    (low,) = AlertEngine([below()]).update(3, {KEY: 0.5})
    assert low.message.startswith("m fell below 1 to 0.5 at step 3")


def test_nonfinite_values_do_not_poison_other_rules():
    clean = [-3.0, -3.5, -3.2, -2.0, -1.5, -1.0, -3.6, -3.6]
    noisy = []
    for v in clean:
        noisy += [v, NAN, INF, -INF]
    rules = (  # explicit settings (independent of the tuned defaults): warm-up 2, patience 2
        DegradationRule(name="uniformity_degradation", metric="uniformity", direction="rise", fraction=0.5,
                        warmup=2, patience=2, hysteresis=0.1, min_drop=0.05),
        NonFiniteRule(),
    )
    engines = AlertEngine(rules), AlertEngine(rules)
    got = ([], [])
    for e, seq, out in zip(engines, (clean, noisy), got):
        for step, v in enumerate(seq):
            out += [a for a in e.update(step, {"spherewatch/uniformity": v}) if a.rule != "nonfinite"]
    assert [a.value for a in got[0]] == [a.value for a in got[1]] == [-1.0]
    ref = engines[1].state_dict()["states"]["uniformity_degradation"]["spherewatch/uniformity"]["ref"]
    assert ref == -3.6  # warm-up (2 samples) skipped; the Infs never became "best"


def test_duplicate_rule_names_are_rejected():
    with pytest.raises(ValueError, match=r"\['m_threshold'\].*distinct `name=`"):
        AlertEngine([below(), below(cooldown=3)])


def test_engine_accepts_rule_dicts_and_rejects_bad_prefix():
    engine = AlertEngine([{"kind": "threshold", "metric": "m", "below": 1}])
    assert engine.update(0, {KEY: 0.0})[0].rule == "m_threshold"
    with pytest.raises(ValueError, match="prefix"):
        AlertEngine([], prefix="/")


def _scenario():
    """Several keys, every rule kind, NaNs, fires and re-arms: a good resume test."""
    import random

    rng = random.Random(1234)
    rows = []
    u, r = -3.5, 60.0
    for step in range(0, 600, 10):
        u = min(0.0, u + rng.uniform(-0.3, 0.35))
        r = max(1.0, r + rng.uniform(-8, 7))
        row = {
            "spherewatch/uniformity": u,
            "spherewatch/effective_rank": r,
            "spherewatch/encoder/effective_rank": r * rng.uniform(0.5, 1.5),
            "spherewatch/mean_cosine": rng.uniform(0, 1),
            "spherewatch/head/uniformity": -2.5 if step < 300 else -1.2,  # one change of level (a new recipe)
        }
        if rng.random() < 0.15:
            row["spherewatch/uniformity"] = rng.choice([NAN, INF])
        rows.append((step, row))
    return rows


RESUME_RULES = (
    # the random walk never gets near complete collapse and has no normalized_std
    # (nor does it hold a deep collapse on two evaluations, nor a level: those kinds are covered by the two below)
    *[r for r in default_rules() if r.name not in ("uniformity_collapse", "rank_one_collapse", "normalized_std_collapse",
                                                    "uniformity_degradation_persists", "rank_collapse_persists",
                                                    "uniformity_regime", "norm_contraction")  # (no norm_mean)
      and r.enabled  # (redundancy_rise: on for redundancy-reduction runs only)
      and not r.name.startswith("head_")],
    ApproachRule(name="rank_deep", metric="effective_rank", collapsed=1.0, scale="log", factor=3.0, patience=2,
                 severity="critical"),
    RegimeRule(name="head_level", tap="head", metric="uniformity", collapsed=0.0),
    LevelRule(name="cosine_level", metric="mean_cosine", direction="rise", factor=1.3, span=40, min_samples=3),
    DegradationRule(name="rank_vs_baseline", metric="effective_rank", direction="fall", fraction=0.3,
                    reference="baseline", baseline_samples=3, hysteresis=0.1, cooldown=2),
    ThresholdRule(metric="mean_cosine", above=0.8, below=0.1, patience=2, hysteresis=0.05, cooldown=3),
    TrendRule(metric="uniformity", direction="rise", slope=0.1, ewma=0.4, hysteresis=0.05),
)


def _run(engine, rows):
    return [(a.rule, a.key, a.step, a.value if math.isfinite(a.value) else str(a.value), a.message, a.severity,
             a.action) for step, row in rows for a in engine.update(step, row)]


@pytest.mark.parametrize("split", [1, 17, 30, 45])
def test_state_dict_round_trip_resumes_identically(split):
    rows = _scenario()
    uninterrupted = _run(AlertEngine(RESUME_RULES), rows)
    assert len(uninterrupted) >= 10 and {a[0] for a in uninterrupted} == {r.name for r in RESUME_RULES}

    first = AlertEngine(RESUME_RULES)
    head = _run(first, rows[:split])
    sd = json.loads(json.dumps(first.state_dict(), allow_nan=False))  # strict JSON: no NaN literals
    resumed = AlertEngine(RESUME_RULES)
    resumed.load_state_dict(sd)
    assert resumed.active.keys() == first.active.keys()
    assert head + _run(resumed, rows[split:]) == uninterrupted


def test_state_dict_restores_a_firing_nan_alert():
    engine = AlertEngine([NonFiniteRule()])
    engine.update(3, {KEY: NAN})
    sd = json.loads(json.dumps(engine.state_dict(), allow_nan=False))
    fresh = AlertEngine([NonFiniteRule()])
    fresh.load_state_dict(sd)
    (alert,) = fresh.active.values()
    assert math.isnan(alert.value) and alert.step == 3
    assert fresh.update(4, {KEY: NAN}) == []  # still firing: not re-emitted


def test_load_state_dict_is_tolerant_of_missing_and_unknown_entries():
    engine = AlertEngine([below(patience=2)])
    engine.load_state_dict({})
    engine.load_state_dict({"states": {"gone_rule": {KEY: {"status": "firing"}}, "m_threshold": {KEY: {"count": 1}}}})
    assert engine.update(0, {KEY: 0.5})[0].step == 0  # count 1 restored -> patience 2 reached now
    with pytest.raises(TypeError, match="state_dict"):
        engine.load_state_dict([1, 2])


def test_reset_forgets_everything():
    engine = AlertEngine([below()])
    engine.update(0, {KEY: 0.5})
    engine.reset()
    assert engine.active == {} and engine.update(1, {KEY: 0.5})[0].step == 1
