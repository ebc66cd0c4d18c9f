"""Rule models: defaults, derived names, validation errors that name the field path and the fix."""
import json

import pydantic
import pytest

from spherewatch.alerts import (
    DEFAULT_RULE_SETTINGS,
    RULE_ADAPTER,
    ApproachRule,
    CollapseRule,
    DegradationRule,
    LevelRule,
    NonFiniteRule,
    RegimeRule,
    ThresholdRule,
    TrendRule,
    default_rules,
    parse_rules,
)


def test_default_rules_watch_uniformity_rank_and_nonfinite():
    # the assignment head's rules (spherewatch.alerts.head_defaults) are tested in tests/heads/
    rules = {r.name: r for r in default_rules() if not r.name.startswith("head_")}
    assert list(rules) == [
        "uniformity_degradation", "rank_collapse", "uniformity_degradation_persists", "rank_collapse_persists",
        "mean_cosine_collapse", "uniformity_collapse", "rank_one_collapse", "normalized_std_collapse",
        "mean_cosine_approach", "norm_contraction", "redundancy_rise", "uniformity_regime", "nonfinite",
    ]
    uni, rank = rules["uniformity_degradation"], rules["rank_collapse"]
    assert isinstance(uni, ApproachRule) and (uni.metric, uni.collapsed, uni.scale, uni.severity) == (
        "uniformity", 0.0, "linear", "warning")
    # the rank in a scale that does not depend on D: ratios of ranks (log distance to the collapsed value 1)
    assert isinstance(rank, ApproachRule) and (rank.metric, rank.collapsed, rank.scale) == ("effective_rank", 1.0, "log")
    # no default compares with a fixed level of a healthy metric
    assert not any(isinstance(r, (DegradationRule, ThresholdRule)) for r in rules.values())
    assert rules["mean_cosine_collapse"].severity == "warning" and rules["mean_cosine_collapse"].patience == 1
    for name in ("uniformity_degradation_persists", "rank_collapse_persists"):  # escalation: deeper, and persisting
        assert rules[name].severity == "critical" and rules[name].patience >= 2
        warn = rules[name.replace("_persists", "")]
        assert rules[name].factor > warn.factor and rules[name].steady == 0
    for name in ("uniformity_collapse", "rank_one_collapse", "normalized_std_collapse"):
        assert isinstance(rules[name], CollapseRule) and rules[name].severity == "critical"
        assert rules[name].patience == 2  # critical only once the collapse persists
    for name in ("uniformity_regime",):  # a change of regime is never more than information
        assert isinstance(rules[name], RegimeRule) and rules[name].severity == "info"
    assert isinstance(rules["nonfinite"], NonFiniteRule) and rules["nonfinite"].severity == "critical"
    # the cross-view redundancy is held down by redundancy-reduction losses only: its rule is off for the others
    red = rules["redundancy_rise"]
    assert isinstance(red, LevelRule) and not red.enabled and red.for_family("redundancy_reduction").enabled
    assert set(DEFAULT_RULE_SETTINGS) == set(rules)


@pytest.mark.parametrize(
    "rule, name",
    [
        (ThresholdRule(metric="mean_cosine", above=0.9), "mean_cosine_threshold"),
        (DegradationRule(metric="uniformity", direction="rise"), "uniformity_degradation"),
        (TrendRule(metric="effective_rank", direction="fall", slope=2.0), "effective_rank_trend"),
        (NonFiniteRule(), "nonfinite"),
        (NonFiniteRule(metric="uniformity*"), "uniformity_nonfinite"),
        (ThresholdRule(name="my_rule", metric="x", below=1), "my_rule"),
    ],
)
def test_rule_name_is_derived_unless_given(rule, name):
    assert rule.name == name


def test_rules_validate_from_dicts_and_round_trip_through_json():
    rules = parse_rules(
        [
            {"kind": "threshold", "metric": "effective_rank", "below": 8, "tap": "enc*", "action": "stop"},
            {"kind": "degradation", "metric": "uniformity", "direction": "rise", "reference": "baseline"},
            {"kind": "trend", "metric": "normalized_std", "direction": "fall", "slope": 0.01, "ewma": 0.5},
            {"kind": "nonfinite"},
        ]
    )
    assert [type(r) for r in rules] == [ThresholdRule, DegradationRule, TrendRule, NonFiniteRule]
    dumped = json.loads(json.dumps([r.model_dump() for r in rules]))
    assert parse_rules(dumped) == rules
    # exclude_unset keeps the discriminator, so a partial dump validates again
    assert parse_rules([r.model_dump(exclude_unset=True) for r in rules]) == rules
    assert RULE_ADAPTER.validate_python(rules[0]) is rules[0]


def test_threshold_rule_needs_above_or_below_and_says_how():
    with pytest.raises(pydantic.ValidationError) as info:
        RULE_ADAPTER.validate_python({"kind": "threshold", "metric": "effective_rank"})
    text = str(info.value)
    assert "`above`" in text and "`below`" in text and "ThresholdRule(metric='effective_rank', below=" in text


def test_threshold_rule_rejects_empty_band():
    with pytest.raises(ValueError, match=r"`below` \(2.0\) must be smaller than `above` \(1.0\)"):
        ThresholdRule(metric="x", above=1.0, below=2.0)


@pytest.mark.parametrize(
    "rules, path",
    [
        ([{"kind": "nonfinite"}, {"kind": "degradation", "metric": "u", "direction": "rise", "fraction": 2}],
         "1.degradation.fraction"),
        ([{"kind": "trend", "metric": "u", "direction": "rise", "slope": 1, "slop": 1}], "0.trend.slop"),
        ([{"kind": "trend", "metric": "u", "direction": "up", "slope": 1}], "0.trend.direction"),
        ([{"kind": "threshold", "metric": "u", "below": 1, "patience": 0}], "0.threshold.patience"),
        ([{"kind": "degradation", "metric": "u", "direction": "fall", "warmup": -1}], "0.degradation.warmup"),
        ([{"kind": "threshold", "metric": "u", "below": 1, "severity": "fatal"}], "0.threshold.severity"),
        ([{"kind": "degradation", "metric": "u", "direction": "fall", "hysteresis": -0.1}],
         "0.degradation.hysteresis"),
        ([{"kind": "threshold", "metric": "u", "below": float("nan")}], "0.threshold.below"),
    ],
)
def test_validation_error_names_the_field_path(rules, path):
    with pytest.raises(pydantic.ValidationError) as info:
        parse_rules(rules)
    assert path in str(info.value)


def test_unknown_kind_lists_the_valid_kinds():
    with pytest.raises(pydantic.ValidationError) as info:
        RULE_ADAPTER.validate_python({"kind": "spike", "metric": "u"})
    text = str(info.value)
    assert "'spike'" in text
    for kind in ("threshold", "degradation", "trend", "nonfinite"):
        assert kind in text


def test_rules_are_frozen_and_hashable():
    rule = ThresholdRule(metric="x", below=1)
    with pytest.raises(pydantic.ValidationError):
        rule.below = 2
    assert len({rule, ThresholdRule(metric="x", below=1)}) == 1
