"""Alert rules: typed, validated descriptions of when a logged metric should raise an alert.

A rule only *describes* a condition: the evaluator registered for its ``kind`` (:mod:`spherewatch.alerts.evaluators`)
judges each sample, and :class:`~spherewatch.alerts.engine.AlertEngine` keeps the per-key state and decides when it
fires. A new kind is its model here (a ``kind`` literal, added to :data:`Rule`) plus its evaluator.

Every rule watches the keys ``<prefix>/<tap>/<metric>`` whose ``tap`` matches :attr:`tap` and whose ``metric``
matches :attr:`metric` (both ``fnmatch`` patterns; a plain name matches only itself, so ``"uniformity"`` does not
match ``"uniformity_pos"``).

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

from typing import Annotated, Any, Dict, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from spherewatch.alerts.advice import LOSS_FAMILIES
from spherewatch.alerts.head_defaults import head_rules

__all__ = [
    "DEFAULT_RULE_SETTINGS",
    "RULE_ADAPTER",
    "ApproachRule",
    "CollapseRule",
    "DegradationRule",
    "DriftRule",
    "LevelRule",
    "NonFiniteRule",
    "RegimeRule",
    "Rule",
    "ThresholdRule",
    "TrendRule",
    "default_rules",
    "families_switching_on",
    "parse_rules",
    "rules_for_family",
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
    enabled: bool = Field(True, description="False: the rule is not evaluated (`by_family` can switch it on for one "
                                            "loss family)")
    by_family: Dict[str, Dict[str, Any]] = Field(
        default_factory=dict,
        description="settings that replace this rule's own when the monitor's `loss_family` is one of the keys, "
                    "e.g. {'non_contrastive': {'skip_first': 0}}",
    )

    @field_validator("by_family")
    @classmethod
    def _check_by_family(cls, value: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
        fixed = {"name", "kind", "metric", "tap", "by_family"}
        for family, settings in value.items():
            if family not in LOSS_FAMILIES:
                raise ValueError(f"`by_family` key {family!r} is not a loss family; use one of {list(LOSS_FAMILIES)}")
            bad = sorted(k for k in settings if k in fixed or k not in cls.model_fields)
            if bad:
                allowed = sorted(k for k in cls.model_fields if k not in fixed)
                raise ValueError(f"`by_family[{family!r}]` cannot set {bad}; a {cls.__name__} can override {allowed}")
        return value

    def __hash__(self) -> int:  # `by_family` is a dict: hash the rule's JSON (equal rules dump equally)
        return hash(self.model_dump_json())

    @model_validator(mode="after")
    def _validated(self) -> Any:
        """Every kind: its own checks (:meth:`_check`), the derived name, then each ``by_family`` override (a bad
        value is an error when the rule is made, not when a run declares its family)."""
        self._check()
        self._finish()
        for family in self.by_family:
            self.for_family(family)
        return self

    def _check(self) -> None:
        """A kind's own consistency checks across fields (raise ``ValueError`` naming the value and the fix)."""

    def for_family(self, family: Optional[str]) -> Any:
        """This rule as it applies to a run of loss family ``family`` (``None``: unknown): its ``by_family``
        settings for that family replace its own (validated like any rule); the same rule when there are none.

        Example:
            >>> r = ApproachRule(metric="mean_cosine", collapsed=1.0, by_family={"supervised": {"factor": 3.0}})
            >>> r.for_family("supervised").factor, r.for_family("contrastive").factor, r.for_family(None).factor
            (3.0, 2.5, 2.5)
        """
        override = self.by_family.get(family) if family is not None else None
        if not override:
            return self
        return type(self).model_validate({**self.model_dump(exclude={"by_family"}), **override})

    def _default_name(self) -> str:
        return f"{_metric_stem(self.metric)}_{self.kind}"  # type: ignore[attr-defined]

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


def _check_log_scale(rule: Any) -> None:
    if rule.scale == "log" and rule.collapsed <= 0:
        raise ValueError(f"a log-scale rule needs a positive `collapsed` value, got {rule.collapsed}")


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

    def _check(self) -> None:
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


class DriftRule(_RuleBase):
    """Fires when a metric has drifted from the run's own settled level by more than its noise and a share of
    the distance to complete collapse.

    How it decides, per key (counted in samples of that key):

    1. **Settling** (the reference is taken after the initial transient, decided from the run itself). With
       ``d_k`` the change from the previous sample, the metric has *settled* at sample ``k`` once ``d_k`` is
       within ``z`` standard errors (``sqrt(se_k^2 + se_{k-1}^2)``), or points the other way than ``d_{k-1}``
       (the transient has turned), or is at most ``settle_ratio`` of the largest change seen so far (it has
       slowed down). Before that the rule never breaches: during the random-initialisation transient
       (effective rank falling 53 -> 27 while a contrastive loss falls, a transformer's mean cosine recovering
       from 0.94) nothing is a degradation; :class:`CollapseRule` watches the transient for complete collapse.
    2. **Reference**: the value at the settling sample. Afterwards the reference follows the mean of the last two
       samples when that is *better* (a smoothed best after the transient), never when it is worse.
    3. **Breach**: with ``dev`` the change from the reference in the unhealthy ``direction`` and
       ``noise = sqrt(se^2 + se_ref^2 + var_obs)`` (``se`` the logged ``<metric>_stderr`` at the rows used, 0 if
       not logged; ``var_obs`` a moving average of half the squared step-to-step change since settling, the
       run's observed variability), the rule breaches when ``dev > max(z * noise, fraction * |collapsed - ref|)``:
       the change must be beyond the run's own noise *and* must have covered ``fraction`` of the distance from
       the reference to the completely collapsed value ``collapsed`` (uniformity 0, effective rank 1).
    4. **Re-arm** once ``dev <= limit - hysteresis * |collapsed - ref|``.

    Example:
        >>> DriftRule(metric="effective_rank", direction="fall", collapsed=1.0).name
        'effective_rank_drift'
    """

    kind: Literal["drift"] = "drift"
    direction: Literal["rise", "fall"] = Field(..., description="the unhealthy direction")
    collapsed: float = Field(..., allow_inf_nan=False, description="the metric's value at complete collapse")
    fraction: float = Field(0.25, gt=0, le=1, description="share of the distance ref -> collapsed that fires")
    z: float = Field(4.0, ge=0, allow_inf_nan=False, description="noise multiples a change must exceed")
    settle_ratio: float = Field(0.5, gt=0, lt=1, description="settled once a change is this share of the largest "
                                                              "change seen (or turns, or is within noise)")


class CollapseRule(_RuleBase):
    """Fires when a metric is at (or next to) its completely collapsed value and is not recovering.

    How it decides, per key: the value is *in the collapse zone* when ``|value - collapsed| <= margin``
    (``relative=True``: ``margin`` is a share of the farthest distance from ``collapsed`` this key has reached,
    for metrics without a scale-free healthy value such as normalized std). A sample *breaches* when it is in
    the zone and the previous sample gives no sign of recovery: the previous value was outside the zone (the run
    just fell in) or the distance from ``collapsed`` did not grow by more than ``z`` standard errors
    (``sqrt(se^2 + se_prev^2)`` from the logged ``<metric>_stderr``) and by at least 2% of the margin. The very
    first sample of a key never breaches: a transformer starts anisotropic (mean cosine 0.94 at step 1) and
    recovers, which is not a collapse. With ``confirm_steps``, a zone entered at the second sample (the first after
    the random initialisation) is not a breach yet: the rule asks the Monitor for a sample ``confirm_steps`` later
    (``AlertEngine.requested_step``) and breaches there unless that sample left the zone or is recovering (MoCo's
    queue of random keys: the first interval's transient enters the zone at step 50 and is already on its way out;
    a collapse from step 0 stays). Severity escalates with persistence through ``patience``: the default
    rules have a warning at the first breaching sample and a critical rule that needs two in a row.
    Re-arm once out of the zone by ``hysteresis * margin``.

    Example:
        >>> CollapseRule(metric="mean_cosine", collapsed=1.0, margin=0.1).name
        'mean_cosine_collapse'
    """

    kind: Literal["collapse"] = "collapse"
    collapsed: float = Field(..., allow_inf_nan=False, description="the metric's value at complete collapse")
    margin: float = Field(..., gt=0, allow_inf_nan=False, description="width of the collapse zone")
    relative: bool = Field(False, description="margin is a share of the farthest distance from `collapsed` seen")
    z: float = Field(2.0, ge=0, allow_inf_nan=False, description="standard errors a recovery must exceed")
    confirm_steps: int = Field(0, ge=0, description="a zone entered at the key's second sample (the first after the "
                                                    "random initialisation) breaches only if a sample asked for this "
                                                    "many steps later is still in it and not recovering (0: at once)")

    def _check(self) -> None:
        if self.relative and self.margin >= 1:
            raise ValueError(f"a relative `margin` is a share below 1, got {self.margin}")


class ApproachRule(_RuleBase):
    """Fires when a metric has come ``factor`` times closer to its completely collapsed value than the farthest it
    has been, or is approaching it steadily: collapse in a scale that no method and no width D sets.

    How it decides, per key (counted in samples of that key):

    * **Distance to collapse**: ``dist = |value - collapsed|`` (``scale="linear"``: mean cosine, uniformity) or
      ``dist = ln(value / collapsed)`` (``scale="log"``: effective rank, collapsed value 1, healthy values from 5 to
      2,000 with the width D). How many times closer ``x`` is than a reference ``r``: ``r / x`` (linear), the ratio
      of the values ``v_r / v_x`` (log: "the rank fell 2x" means the same at D = 32 and D = 2048).
    * **Reference** (``far``): the farthest from collapse the key has been, from its ``skip_first + 1``-th sample
      on: the first sample of a run is the random initialisation, whose spread training legitimately gives up
      (healthy MoCo goes from mean cosine 0.27 at step 1 to 0.85 at step 50 and back to 0.35 at step 100). A model
      that starts near collapse and spreads out (a transformer's anisotropic start) only raises ``far``.
    * **Breach** when ``far / dist >= factor`` (beyond ``z`` standard errors of the two values, from the logged
      ``<metric>_stderr``), or -- a steady approach, counted from the run's first sample -- when every evaluation
      of the last ``steady_span`` optimizer steps (at least ``steady`` moves) moved toward collapse, the second
      half of that window at least half as much as the first (as log-ratios: a step that then holds, like a change
      of recipe, is not steady), beyond ``z`` standard errors overall, and ``steady_factor`` times closer. The span
      is in steps, so a finer cadence does not turn a transient into a steady approach; a transient that turns
      (SimCLR's and MoCo's first 50 steps) never is one.
    * ``jump``: also a breach when the last evaluation alone came ``jump`` times closer (a sudden fall; never the
      move from the run's first sample).
    * ``unless_recovering``: no breach while the distance grew since the previous sample by more than ``z``
      standard errors (the critical defaults: a jump that is already recovering is not called critical).
    * ``confirm_first`` (steps): the run's first sample is not a reference (``skip_first``), but when the second
      came ``factor`` times closer than it, the rule asks the Monitor for a sample ``confirm_first`` steps later
      (``AlertEngine.requested_step``) and breaches there if that one came ``confirm_factor`` times closer still
      (beyond ``z`` standard errors): an approach from step 0 that goes on. A transient that turns (MoCo's first
      interval) is receding by then.
    * **Re-arm** once ``far / dist <= factor / (1 + hysteresis)``.

    Example:
        >>> ApproachRule(metric="mean_cosine", collapsed=1.0).name
        'mean_cosine_approach'
    """

    kind: Literal["approach"] = "approach"
    collapsed: float = Field(..., allow_inf_nan=False, description="the metric's value at complete collapse")
    scale: Literal["linear", "log"] = Field("linear", description="distance |value - collapsed| or ln(value/collapsed)")
    factor: float = Field(2.5, gt=1, allow_inf_nan=False, description="shrink of the distance (from its farthest) "
                                                                        "that fires")
    steady: int = Field(2, ge=0, description="fewest moves toward collapse in a row that can fire at "
                                             "`steady_factor` (0: off)")
    steady_span: int = Field(100, ge=1, description="optimizer steps the moves must span (so the cadence does not "
                                                    "change what counts as steady)")
    steady_factor: float = Field(2.0, gt=1, allow_inf_nan=False, description="shrink over `steady` moves that fires")
    z: float = Field(3.0, ge=0, allow_inf_nan=False, description="standard errors a move must exceed")
    skip_first: int = Field(1, ge=0, description="first samples of a key that are never the reference (the random "
                                                 "initialisation); a steady approach still counts from them")
    unless_recovering: bool = Field(False, description="no breach while the distance grew since the previous sample "
                                                       "by more than `z` standard errors (a recovery)")
    jump: float = Field(0.0, ge=0, allow_inf_nan=False, description="also breach when one evaluation came this many "
                                                                     "times closer (0: off; never from the first "
                                                                     "sample)")
    confirm_first: int = Field(0, ge=0, description="steps: when the second sample came `factor` times closer than the "
                                                    "first (not a reference: `skip_first`), ask for a sample this many "
                                                    "steps later and breach there if it came closer still (0: off)")
    confirm_factor: float = Field(1.1, gt=1, allow_inf_nan=False, description="how many times closer the sample asked "
                                                                                "for must be (with `confirm_first`)")

    def _check(self) -> None:
        _check_log_scale(self)


class RegimeRule(_RuleBase):
    """Reports (never as a collapse) a step change of a metric's level: "the geometry changed at step 300".

    After ``settle`` samples, a sample whose distance to the collapsed value (as :class:`ApproachRule`, ``scale``)
    came ``factor`` times closer than the level of the previous two samples (which must agree within the square
    root of ``factor``: a level, not a transient) and beyond ``z`` standard errors, is a change of regime; with
    ``patience=2`` (the default rules) the next sample must confirm the new level. A move away from collapse (a
    recovery) is not reported. A deliberate change of recipe (stronger augmentations, a new loss weight, a new head) is one;
    a collapse is caught by the collapse rules, which this rule does not replace. Its alerts have
    ``kind="regime_change"`` and do not count toward a run's collapse verdict.

    Example:
        >>> RegimeRule(metric="uniformity", collapsed=0.0).name
        'uniformity_regime'
    """

    kind: Literal["regime"] = "regime"
    collapsed: float = Field(..., allow_inf_nan=False, description="the metric's value at complete collapse")
    scale: Literal["linear", "log"] = "linear"
    factor: float = Field(1.4, gt=1, allow_inf_nan=False, description="change of the distance to collapse that "
                                                                        "counts as a new regime")
    settle: int = Field(3, ge=2, description="samples before any change counts (the initial transient)")
    z: float = Field(6.0, ge=0, allow_inf_nan=False, description="standard errors the change must exceed")
    severity: Literal["info", "warning", "critical"] = "info"

    def _check(self) -> None:
        _check_log_scale(self)


class LevelRule(_RuleBase):
    """Fires when a metric has moved ``factor`` times (a ratio of values) in the unhealthy ``direction`` from the best
    level the run has held: for a positive metric whose healthy value is a small multiple of a sampling floor and
    that collapse multiplies, such as ``redundancy`` (about 1/N for independent features, a few times that on a
    healthy Barlow Twins or VICReg run, several times more once the redundancy term stops working).

    How it decides, per key:

    * **Level**: after each sample, the samples of the last ``span`` optimizer steps (at least ``min_samples``,
      spanning at least ``span`` steps) *hold a level* when the medians of their first and second halves agree
      within ``flat`` (a ratio): a metric still rising out of its random initialisation (an LR warm-up) or moving to
      a new regime holds none. The level is the median of those samples.
    * **Reference**: the best level held so far (the lowest for ``direction="rise"``). Nothing breaches before the
      run has held one.
    * **Breach** when the value is ``factor`` times worse than the reference (``value >= factor * ref`` for a rise)
      and, with ``hold_steps``, has been on every sample of the last ``hold_steps`` optimizer steps and the latest one
      before them (at a 50-step cadence and ``hold_steps=30``: two evaluations in a row; every 10 steps: four), so
      that a finer cadence does not turn single noisy batches into an alert.
    * **Re-arm** once ``ratio * (1 + hysteresis) <= factor``.

    Example:
        >>> LevelRule(metric="redundancy", direction="rise").name
        'redundancy_level'
    """

    kind: Literal["level"] = "level"
    direction: Literal["rise", "fall"] = Field(..., description="the unhealthy direction")
    factor: float = Field(2.5, gt=1, allow_inf_nan=False, description="ratio to the best level held that fires")
    span: int = Field(150, ge=1, description="optimizer steps a level must be held over")
    min_samples: int = Field(4, ge=2, description="fewest samples in a level")
    flat: float = Field(1.5, gt=1, allow_inf_nan=False, description="largest ratio between the medians of the two "
                                                                      "halves of a level")
    hold_steps: int = Field(0, ge=0, description="optimizer steps the ratio must have held (0: one sample fires)")


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

    def _default_name(self) -> str:
        return "nonfinite" if self.metric == "*" else f"{_metric_stem(self.metric)}_nonfinite"


#: Any rule; a dict with ``kind`` in ``threshold | degradation | trend | drift | collapse | approach | regime |
#: level | nonfinite`` validates into it.
Rule = Annotated[
    Union[ThresholdRule, DegradationRule, TrendRule, DriftRule, CollapseRule, ApproachRule, RegimeRule,
          LevelRule, NonFiniteRule],
    Field(discriminator="kind"),
]
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


def rules_for_family(rules: Any, family: Optional[str]) -> tuple[Any, ...]:
    """The rules (models or dicts) as they apply to a run of loss family ``family`` (``None``: unknown): each with its
    ``by_family`` settings for that family, the ones switched off (``enabled=False``) left out -- what the engine
    evaluates and what the run's parameters list.

    Example:
        >>> on = {"kind": "threshold", "metric": "x", "above": 1, "enabled": False,
        ...       "by_family": {"supervised": {"enabled": True}}}
        >>> [r.name for r in rules_for_family([on], None)], [r.name for r in rules_for_family([on], "supervised")]
        ([], ['x_threshold'])
    """
    applied = (r.for_family(family) for r in parse_rules(rules))
    return tuple(r for r in applied if r.enabled)


def families_switching_on(rule: Any) -> list[str]:
    """The loss families for which ``rule`` is on (all of them for a rule that is on; some for a rule that only its
    ``by_family`` settings switch on, such as ``redundancy_rise``)."""
    return [f for f in LOSS_FAMILIES if rule.for_family(f).enabled]


# --------------------------------------------------------------------------------------------- default rules
#: Loss families whose healthy runs have no early transient toward collapse, so that the run's FIRST sample (the
#: random initialisation) is a reference of the spread warnings too. Measured over the scenario suites (every 50
#: steps, 3 seeds, healthy runs of 2,000 steps under warm-up, cosine, step decay and restarts): no healthy SimSiam or
#: BYOL run came more than 1.11x (mean cosine) / 1.35x (uniformity) closer to collapse than its first sample, no
#: Barlow Twins or VICReg run more than 1.45x / 1.50x, against 2.5x that fires; contrastive runs pass through a
#: transient that recovers (MoCo: mean cosine 0.27 -> 0.90 in 10 steps, back to 0.35 by step 100; 5.0x). Declared
#: (``loss_family``), a collapse from step 0 is caught at the first evaluation after the first sample (SimSiam without
#: stop-gradient at D = 512: 3.2x at step 50, 20 steps after the probe's onset; unset, step 100). Not for the other
#: families: a supervised classifier's or a backbone's features are often non-negative (after a ReLU), where mean
#: cosine can legitimately rise from its random start; self-distillation and clustering methods are watched at such
#: a backbone. Unknown families (the default) keep skipping the first sample.
_FIRST_SAMPLE_COUNTS = {f: {"skip_first": 0} for f in ("non_contrastive", "redundancy_reduction")}

#: Steps after a collapse zone entered at the first trained evaluation at which the zone rules confirm it (the Monitor
#: evaluates there too). Measured every 5 steps: healthy MoCo at batch 32 (its queue of 1,024 random keys) peaks at
#: mean cosine 0.94 by step 30 and is leaving the zone at 50-60 (0.923 -> 0.891, 0.926 -> 0.897: 3-4 standard errors
#: of a batch of 32); SimSiam without stop-gradient from step 0 goes on into it (0.980 -> 0.983). 10 steps keep a
#: collapse from step 0 within one interval of its onset at the default cadence (onset 10, alert 60).
_CONFIRM_STEPS = 10

#: Loss families that hold the features' cross-view redundancy down (Barlow Twins' off-diagonal term, VICReg's
#: covariance term): only there is a rise of ``redundancy`` a sign of collapse, so ``redundancy_rise`` is on for them.
_REDUNDANCY_FAMILIES = {"redundancy_reduction": {"enabled": True}}

#: The numbers behind :func:`default_rules`, in one place (checked against the scenario suites:
#: tests/engine/test_scenarios.py on generated data, tests/scenarios/ and benchmarks/scenarios.py on real
#: frameworks, and the saved traces replayed by benchmarks/replay_rules.py; docs/alerts-design.md says why each
#: number holds across model families). Every default measures the distance to the completely collapsed value in a
#: scale no method sets (mean cosine and uniformity: |value - collapsed|; effective rank: ln(rank), so a ratio of
#: ranks means the same at D = 32 and D = 2048) and never compares with a fixed level of a healthy metric:
#:
#: * ``uniformity_degradation``, ``mean_cosine_approach``, ``rank_collapse`` (warning): :class:`ApproachRule` --
#:   the distance shrank 2.5x (rank: fell 2x, or 1.7x in one evaluation) from the farthest it has been after the
#:   run's first sample, or (spread
#:   metrics) every evaluation of the last 100 steps moved toward collapse without slowing down and 1.6x closer
#:   overall (a steady approach from step 0; a transient that turns, such as SimCLR's first interval, is not one);
#: * ``uniformity_degradation_persists``, ``rank_collapse_persists`` (critical): the collapse is real -- the
#:   distance shrank 8x (rank: fell 4x) on two evaluations in a row, while not moving away from collapse;
#: * ``mean_cosine_collapse`` (warning, first breaching sample) and ``uniformity_collapse``,
#:   ``rank_one_collapse``, ``normalized_std_collapse`` (critical, two breaching samples in a row):
#:   :class:`CollapseRule` -- complete collapse (mean cosine > 0.9, uniformity > -0.4 at t=2, effective rank < 1.5,
#:   normalized std below 10% of its own peak) that is not recovering; never on the first sample of a run;
#: * ``norm_contraction`` (warning): :class:`ApproachRule` on ``norm_mean`` -- the raw embeddings' mean norm fell 4x
#:   from the largest it has been after the first sample (contracting toward the origin: VICReg once its variance
#:   term is gone, before the directions move; healthy runs of ten families fall 2.03x at most);
#: * ``uniformity_regime`` (info, ``kind="regime_change"``): :class:`RegimeRule` -- the level of uniformity came
#:   1.5x closer to collapse in one step and held on the next evaluation ("the geometry changed at step 300"): a
#:   deliberate change of recipe, reported, never a collapse alert.
#:
#: With ``loss_family`` declared ``non_contrastive`` or ``redundancy_reduction``, the two spread warnings also take
#: the run's first sample as a reference (their ``by_family`` settings; :data:`_FIRST_SAMPLE_COUNTS` says why).
DEFAULT_RULE_SETTINGS = {
    # warnings: the distance to the collapsed value shrank (from the farthest it has been) or is shrinking steadily
    "uniformity_degradation": dict(
        kind="approach", metric="uniformity", collapsed=0.0, factor=2.5, steady=2, steady_factor=1.6, z=3.0,
        patience=1, hysteresis=0.1, severity="warning", by_family=_FIRST_SAMPLE_COUNTS, confirm_first=_CONFIRM_STEPS,
    ),
    "rank_collapse": dict(
        kind="approach", metric="effective_rank", collapsed=1.0, scale="log", factor=2.0, jump=1.7, steady=0, z=3.0,
        patience=1, hysteresis=0.1, severity="warning",
    ),
    # critical: the collapse is real -- deep (8x closer for uniformity, rank fell 4x) on two evaluations in a row,
    # not recovering
    "uniformity_degradation_persists": dict(
        kind="approach", metric="uniformity", collapsed=0.0, factor=8.0, steady=0, z=3.0,
        patience=2, unless_recovering=True, hysteresis=0.1, severity="critical",
    ),
    "rank_collapse_persists": dict(
        kind="approach", metric="effective_rank", collapsed=1.0, scale="log", factor=4.0, steady=0, z=3.0,
        patience=2, unless_recovering=True, hysteresis=0.1, severity="critical",
    ),
    "mean_cosine_collapse": dict(
        kind="collapse", metric="mean_cosine", collapsed=1.0, margin=0.1, patience=1, hysteresis=0.5,
        severity="warning", confirm_steps=_CONFIRM_STEPS,
    ),
    "uniformity_collapse": dict(
        # t=2: uniformity >= -4 (1 - mean cosine), so the zone matches mean cosine > 0.9
        kind="collapse", metric="uniformity", collapsed=0.0, margin=0.4, patience=2, hysteresis=0.5,
        severity="critical", confirm_steps=_CONFIRM_STEPS,
    ),
    "rank_one_collapse": dict(
        kind="collapse", metric="effective_rank", collapsed=1.0, margin=0.5, patience=2, hysteresis=0.5,
        severity="critical", confirm_steps=_CONFIRM_STEPS,
    ),
    "normalized_std_collapse": dict(
        kind="collapse", metric="normalized_std", collapsed=0.0, margin=0.1, relative=True, patience=2,
        hysteresis=0.5, severity="critical", confirm_steps=_CONFIRM_STEPS,
    ),
    # warning: mean cosine, the same way as uniformity (the two disagree on clustered embeddings)
    "mean_cosine_approach": dict(
        kind="approach", metric="mean_cosine", collapsed=1.0, factor=2.5, steady=2, steady_factor=1.6, z=3.0,
        patience=1, hysteresis=0.1, severity="warning", by_family=_FIRST_SAMPLE_COUNTS, confirm_first=_CONFIRM_STEPS,
    ),
    # warning: the raw embeddings contract toward the origin -- their mean norm fell 4x from the largest it has been
    # after the first sample (VICReg once its variance term is gone: 4.4-5.3x within one interval of the probe's
    # onset; healthy runs of every family fall 2.03x at most, MoCo after its first interval; see alerts-design.md)
    "norm_contraction": dict(
        kind="approach", metric="norm_mean", collapsed=0.0, factor=4.0, steady=0, z=3.0,
        patience=1, hysteresis=0.1, severity="warning",
    ),
    # warning, redundancy-reduction runs only: the cross-view redundancy at least 2x the lowest level the run has held
    # over 150 steps, held for 30 steps (two evaluations at the default cadence) (Barlow Twins without its off-diagonal
    # term: 2.9-3.2x within one interval; lambda fading: from 60 steps before to 320 after the probe's onset; healthy
    # Barlow Twins and VICReg under warm-up, cosine, step decay, restarts, stronger augmentations, a batch change: 1.37x
    # at most held, 1.82x on one evaluation; outside the suite at D = 512/2,048, batch 32-512, every 10 or 50 steps:
    # 1.63x held, 2.38x on one batch of 32). Off for the other families: nothing in their losses holds it down
    # (healthy BYOL rises up to 10x)
    "redundancy_rise": dict(
        kind="level", metric="redundancy", direction="rise", factor=2.0, span=150, min_samples=4, flat=1.5,
        hold_steps=30, patience=1, hysteresis=0.1, severity="warning", enabled=False, by_family=_REDUNDANCY_FAMILIES,
    ),
    # info, kind "regime_change": the level changed in one step and held (a deliberate change of recipe)
    "uniformity_regime": dict(
        kind="regime", metric="uniformity", collapsed=0.0, factor=1.5, settle=3, z=6.0, patience=2, severity="info",
    ),
    "nonfinite": dict(kind="nonfinite", metric="*", severity="critical"),
}


def default_rules() -> tuple[Any, ...]:
    """The rules that are on by default (see :data:`DEFAULT_RULE_SETTINGS` for how each decides).

    Example:
        >>> [r.name for r in default_rules()]  # doctest: +NORMALIZE_WHITESPACE
        ['uniformity_degradation', 'rank_collapse', 'uniformity_degradation_persists', 'rank_collapse_persists',
         'mean_cosine_collapse', 'uniformity_collapse', 'rank_one_collapse', 'normalized_std_collapse',
         'mean_cosine_approach', 'norm_contraction', 'redundancy_rise', 'uniformity_regime', 'nonfinite',
         'head_uniform_output',
         'head_uniform_output_persists', 'head_prototype_collapse', 'head_prototype_collapse_persists',
         'head_one_prototype']
    """
    rules: list[Any] = []
    for name, settings in DEFAULT_RULE_SETTINGS.items():
        rules.append(RULE_ADAPTER.validate_python({"name": name, **settings}))
    rules.extend(head_rules())  # the assignment head's (issue 18): inert without a head tap
    return tuple(rules)
