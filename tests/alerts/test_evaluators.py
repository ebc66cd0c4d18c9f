"""The rule-kind registry: every kind the rules admit has one evaluator, looked up by `kind`."""
import typing

import pytest

from spherewatch.alerts import Rule, ThresholdRule
from spherewatch.alerts.evaluators import EVALUATORS, Sample, evaluator_for, register


def test_every_rule_kind_has_exactly_one_evaluator():
    kinds = {cls.model_fields["kind"].default for cls in typing.get_args(typing.get_args(Rule)[0])}
    assert kinds == set(EVALUATORS)
    assert [k for k, e in EVALUATORS.items() if e.sees_nonfinite] == ["nonfinite"]


def test_evaluator_judges_a_sample_and_names_the_tap():
    rule = ThresholdRule(metric="mean_cosine", above=0.9, hysteresis=0.1)
    breach, rearm, msg = evaluator_for(rule).judge(rule, None, Sample(0.95, "mean_cosine", "cls", 7, 0.0))
    assert breach and not rearm and "rose above 0.9 to 0.95 at step 7 (tap 'cls')" in msg
    assert evaluator_for(rule).judge(rule, None, Sample(0.7, "mean_cosine", "cls", 8, 0.0)) == (False, True, None)


def test_unknown_kind_is_a_type_error_listing_the_registered_kinds():
    class Odd:
        kind = "odd"

    with pytest.raises(TypeError, match="registered kinds: approach, collapse, degradation, drift"):
        evaluator_for(Odd())


def test_a_kind_registers_once():
    with pytest.raises(ValueError, match="already has an evaluator"):
        register("threshold")(lambda rule, st, s: None)
