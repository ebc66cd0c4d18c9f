"""Alert rules: typed, validated descriptions of when a logged metric should raise an alert.

A rule only *describes* a condition; :class:`~spherewatch.alerts.engine.AlertEngine` keeps the per-key state and
decides when it fires. Every rule watches the keys ``<prefix>/<tap>/<metric>`` whose ``tap`` matches
:attr:`tap` and whose ``metric`` matches :attr:`metric` (both ``fnmatch`` patterns; a plain name matches only
itself, so ``"uniformity"`` does not match ``"uniformity_pos"``).

Common life cycle of one (rule, key) pair, counted in *samples of that key* (one sample = one value of that key
passed to :meth:`AlertEngine.update`):

* ``warmup``: the first ``warmup`` finite samples are ignored completely. They are not compared and they do **not**
  update references (the "best" value, the baseline, the trend). Early-training values are transients (a random
  encoder can look very uniform or very collapsed); letting them set "best" would make a later, healthy value
  look like a degradation.
* ``patience``: the condition must hold on this many consecutive samples before the rule fires.
* ``hysteresis``: a fired rule stays *firing* (and does not fire again) until the value is back inside the
  threshold by this margin; then it re-arms. The margin is absolute for :class:`ThresholdRule` and
  :class:`TrendRule` (in the units of the metric, resp. of its per-sample slope) and relative to ``|reference|``
  for :class:`DegradationRule`.
* ``cooldown``: after a fire, the same (rule, key) cannot fire again for this many samples, even if it re-armed.

Non-finite values (NaN, +-Inf) are skipped by every rule except :class:`NonFiniteRule`: they do not count as
samples, do not break a run of breaching samples and never reach a reference, so one NaN cannot poison a rule.

Example:
    >>> from spherewatch.alerts import RULE_ADAPTER, ThresholdRule
    >>> ThresholdRule(metric="effective_rank", below=8.0).name
    'effective_rank_threshold'
    >>> RULE_ADAPTER.validate_python({"kind": "degradation", "metric": "uniformity", "direction": "rise"}).name
    'uniformity_degradation'
"""
# Pydantic evaluates these annotations at runtime: keep typing.Optional/Union (Python 3.9 has no `X | None`).
# ruff: noqa: UP045
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

__all__ = [
    "DEFAULT_RULE_SETTINGS",
    "RULE_ADAPTER",
    "DegradationRule",
    "NonFiniteRule",
    "Rule",
    "ThresholdRule",
    "TrendRule",
    "default_rules",
    "parse_rules",
]


class _RuleBase(BaseModel):
    """Fields shared by every rule kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Optional[str] = Field(
        None, min_length=1, description="rule name used in alerts and state; default derived, e.g. 'uniformity_degradation'"
    )
    metric: str = Field(..., min_length=1, description="metric name as logged (fnmatch pattern), e.g. 'uniformity'")
    tap: str = Field("*", min_length=1, description="fnmatch pattern on the tap part of the key")
    severity: Literal["info", "warning", "critical"] = "warning"
    action: Literal["log", "stop"] = Field("log", description="'stop' sets Monitor.should_stop when the rule fires")
    warmup: int = Field(0, ge=0, description="finite samples of a key ignored (not compared, no reference update)")
    patience: int = Field(1, ge=1, description="consecutive breaching samples needed to fire")
    cooldown: int = Field(0, ge=0, description="samples after a fire during which the same (rule, key) cannot fire")
    hysteresis: float = Field(0.0, ge=0, description="margin back inside the threshold needed to re-arm")

    def _default_name(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _finish(self) -> None:
        """Fill the derived name (models are frozen, so this runs once, inside validation).

        ``kind`` is marked as set so that ``model_dump(exclude_unset=True)`` keeps the discriminator.
        """
        if self.name is None:
            object.__setattr__(self, "name", self._default_name())
        self.__pydantic_fields_set__.add("kind")

    @property
    def rule_name(self) -> str:
        """The rule's name (never ``None`` after validation)."""
        return self.name  # type: ignore[return-value]


def _metric_stem(metric: str) -> str:
    stem = "".join(c if (c.isalnum() or c == "_") else "_" for c in metric).strip("_")
    return stem or "any"


class ThresholdRule(_RuleBase):
    """Fires when a metric goes above ``above`` or below ``below`` (at least one is required).

    Breach: ``value > above`` or ``value < below``. Re-arm: ``value <= above - hysteresis`` and
    ``value >= below + hysteresis`` (absolute margin).

    Example:
        >>> ThresholdRule(metric="mean_cosine", above=0.9, patience=2).name
        'mean_cosine_threshold'
    """

    kind: Literal["threshold"] = "threshold"
    above: Optional[float] = Field(None, allow_inf_nan=False, description="fire when value > above")
    below: Optional[float] = Field(None, allow_inf_nan=False, description="fire when value < below")

    @model_validator(mode="after")
    def _check(self) -> ThresholdRule:
        if self.above is None and self.below is None:
            raise ValueError(
                "a threshold rule needs `above` and/or `below`, got neither; "
                f"e.g. ThresholdRule(metric={self.metric!r}, below=8.0)"
            )
        if self.above is not None and self.below is not None and self.below >= self.above:
            raise ValueError(
                f"`below` ({self.below}) must be smaller than `above` ({self.above}): the rule fires outside "
                "[below, above]; swap them or drop one"
            )
        self._finish()
        return self

    def _default_name(self) -> str:
        return f"{_metric_stem(self.metric)}_threshold"


class DegradationRule(_RuleBase):
    """Fires when a metric has lost a ``fraction`` of its reference value (the best or the baseline).

    Let ``ref`` be the reference and ``allowed = max(fraction * |ref|, min_drop)``:

    * ``direction="fall"`` (effective rank, normalized std: bigger is healthier):
      breach when ``value < ref - allowed``, i.e. ``value < ref * (1 - fraction)`` for ``ref > 0``.
      ``best`` is the **maximum** seen so far.
    * ``direction="rise"`` (uniformity: negative, degrades toward 0 = complete collapse):
      breach when ``value > ref + allowed``, i.e. ``value > ref * (1 - fraction)`` for ``ref < 0``:
      ``fraction`` is the share of the spread lost. ``best`` is the **minimum** seen so far.

    ``reference="best"``: the best value among the post-warm-up samples *before* the current one (the first
    post-warm-up sample only sets it). ``reference="baseline"``: the mean of the first ``baseline_samples``
    post-warm-up samples, fixed afterwards; the rule cannot fire before the baseline is complete.

    ``min_drop`` is an absolute floor on the change, so tiny references do not fire on noise.
    Re-arm once ``drop <= allowed - hysteresis * |ref|`` (``drop`` = change in the bad direction).

    Example:
        >>> DegradationRule(metric="effective_rank", direction="fall", fraction=0.5).name
        'effective_rank_degradation'
    """

    kind: Literal["degradation"] = "degradation"
    direction: Literal["rise", "fall"]
    fraction: float = Field(0.5, gt=0, le=1, description="share of |reference| that may be lost before firing")
    reference: Literal["best", "baseline"] = "best"
    baseline_samples: int = Field(3, ge=1, description="post-warm-up samples averaged into the baseline")
    min_drop: float = Field(0.0, ge=0, allow_inf_nan=False, description="absolute floor on the change that fires")

    @model_validator(mode="after")
    def _check(self) -> DegradationRule:
        self._finish()
        return self

    def _default_name(self) -> str:
        return f"{_metric_stem(self.metric)}_degradation"


class TrendRule(_RuleBase):
    """Fires when the EWMA-smoothed per-sample slope of a metric moves in the bad direction faster than ``slope``.

    With ``d_k = value_k - value_{k-1}`` (consecutive post-warm-up finite samples of the key) the smoothed slope
    is ``s_1 = d_1`` and ``s_k = ewma * d_k + (1 - ewma) * s_{k-1}``. Breach: ``s > slope`` (``direction="rise"``)
    or ``s < -slope`` (``"fall"``). Re-arm once back inside by ``hysteresis`` (absolute, slope units).
    The slope is per *sample*, not per optimizer step: it depends on the sampling cadence.

    Example:
        >>> TrendRule(metric="uniformity", direction="rise", slope=0.2).name
        'uniformity_trend'
    """

    kind: Literal["trend"] = "trend"
    direction: Literal["rise", "fall"]
    ewma: float = Field(0.3, gt=0, lt=1, description="weight of the newest slope in the moving average")
    slope: float = Field(..., gt=0, allow_inf_nan=False, description="per-sample slope that fires")

    @model_validator(mode="after")
    def _check(self) -> TrendRule:
        self._finish()
        return self

    def _default_name(self) -> str:
        return f"{_metric_stem(self.metric)}_trend"


class NonFiniteRule(_RuleBase):
    """Fires when a matching metric is NaN or +-Inf (default: any metric, severity ``critical``).

    Re-arms on the next finite value (``hysteresis`` is not used).

    Example:
        >>> NonFiniteRule().name
        'nonfinite'
    """

    kind: Literal["nonfinite"] = "nonfinite"
    metric: str = Field("*", min_length=1, description="fnmatch pattern on the metric name")
    severity: Literal["info", "warning", "critical"] = "critical"

    @model_validator(mode="after")
    def _check(self) -> NonFiniteRule:
        self._finish()
        return self

    def _default_name(self) -> str:
        return "nonfinite" if self.metric == "*" else f"{_metric_stem(self.metric)}_nonfinite"


#: Any rule; a dict with ``kind`` in ``threshold | degradation | trend | nonfinite`` validates into it.
Rule = Annotated[Union[ThresholdRule, DegradationRule, TrendRule, NonFiniteRule], Field(discriminator="kind")]
#: Validates a dict (``RULE_ADAPTER.validate_python``); use :func:`parse_rules` for a list.
RULE_ADAPTER: TypeAdapter = TypeAdapter(Rule, config=ConfigDict(title="Rule"))
_RULES_ADAPTER: TypeAdapter = TypeAdapter(tuple[Rule, ...], config=ConfigDict(title="rules"))


def parse_rules(rules: Any) -> tuple[Any, ...]:
    """Validate one rule or a list of rules given as models and/or dicts.

    Raises:
        pydantic.ValidationError: (a ``ValueError``) naming the path of the bad field, e.g. ``1.degradation.fraction``.

    Example:
        >>> [r.name for r in parse_rules([{"kind": "nonfinite"}, {"kind": "threshold", "metric": "x", "above": 1}])]
        ['nonfinite', 'x_threshold']
    """
    if isinstance(rules, (dict, _RuleBase)):
        rules = [rules]
    return _RULES_ADAPTER.validate_python(list(rules))


# --------------------------------------------------------------------------------------------- default rules
#: The numbers behind :func:`default_rules`, in one place (tuned against the scenario suite).
DEFAULT_RULE_SETTINGS = {
    # Tuned on the scenario suite (tests/engine/test_scenarios.py, spherewatch.demo): healthy runs lose at most
    # ~25% of their best uniformity spread and ~40% of their best effective rank (the random-init transient),
    # collapsing runs lose 50-85% within one sampling interval of the onset. Patience 1 so that an alert comes
    # within one interval; warm-up 0 so that a collapse in the first interval (SimSiam without stop-gradient
    # collapses in ~10 steps) is still measured against the initial state.
    "uniformity_degradation": dict(
        kind="degradation", metric="uniformity", direction="rise", fraction=0.5, reference="best",
        warmup=0, patience=1, cooldown=0, hysteresis=0.1, min_drop=0.05, severity="warning",
    ),
    "uniformity_collapse": dict(
        # absolute safety net (t=2): mean pair kernel above e^-0.5, i.e. mean cosine ~0.9 — collapsed whatever
        # the history (a monitor attached to a run that had already collapsed)
        kind="threshold", metric="uniformity", above=-0.5, patience=1, hysteresis=0.1, severity="critical",
    ),
    "rank_collapse": dict(
        kind="degradation", metric="effective_rank", direction="fall", fraction=0.5, reference="best",
        warmup=0, patience=1, cooldown=0, hysteresis=0.1, min_drop=1.0, severity="warning",
    ),
    "nonfinite": dict(kind="nonfinite", metric="*", severity="critical"),
}


def default_rules() -> tuple[Any, ...]:
    """The rules that are on by default: uniformity degradation and collapse, rank collapse, non-finite metrics.

    Numbers live in :data:`DEFAULT_RULE_SETTINGS`.

    Example:
        >>> [r.name for r in default_rules()]
        ['uniformity_degradation', 'uniformity_collapse', 'rank_collapse', 'nonfinite']
    """
    rules: list[Any] = []
    for name, settings in DEFAULT_RULE_SETTINGS.items():
        rules.append(RULE_ADAPTER.validate_python({"name": name, **settings}))
    return tuple(rules)
