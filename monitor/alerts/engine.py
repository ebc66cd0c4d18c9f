"""The alert engine: evaluates rules on logged values and runs one state machine per (rule, key)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from spherewatch.alerts.alert import Alert
from spherewatch.alerts.rules import (
    CollapseRule,
    DegradationRule,
    DriftRule,
    NonFiniteRule,
    ThresholdRule,
    TrendRule,
    parse_rules,
)
from spherewatch.keys import KeyScheme, parse_key

__all__ = ["FIRING", "OK", "PENDING", "AlertEngine"]

#: States of one (rule, key) pair.
OK, PENDING, FIRING = "ok", "pending", "firing"
_STATE_VERSION = 2
#: Consecutive samples back inside the threshold (by the rule's hysteresis margin) that resolve an open alert.
RESOLVE_AFTER = 3
_SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}

# What a degradation of a metric means, and what to check. Unknown metrics get the generic entry.
_HINTS: dict[str, tuple[str, str]] = {
    "uniformity": (
        "embeddings are losing spread on the sphere — possible collapse",
        (
            "the learning rate, the loss (for contrastive losses the negatives and the temperature; for "
            "SimSiam/BYOL-style losses the stop-gradient and the predictor) and the augmentations"
        ),
    ),
    "effective_rank": (
        "embeddings span fewer and fewer directions — dimensional collapse",
        "weight decay versus augmentation strength, the projector width and the learning rate",
    ),
    "normalized_std": (
        "embeddings are converging to one direction — possible complete collapse",
        "the learning rate, the loss (the stop-gradient and predictor of SimSiam/BYOL-style losses; the negatives "
        "of contrastive ones) and the augmentations",
    ),
    "mean_cosine": (
        "embeddings are becoming parallel — possible collapse",
        "the learning rate, the loss (the negatives of contrastive losses; the stop-gradient and predictor of "
        "SimSiam/BYOL-style ones) and the augmentations",
    ),
    "alignment": (
        "positive pairs are drifting apart",
        "the augmentations and that the two views are paired row by row",
    ),
    "collapsed_dimensions": (
        "more embedding dimensions carry (almost) no variance — dimensional collapse",
        "weight decay versus augmentation strength and the projector width",
    ),
    "dead_dimensions": (
        "more embedding dimensions are constant",
        "activations before the embedding (dead ReLUs), the learning rate and weight decay",
    ),
    "nonfinite_fraction": (
        "embeddings contain NaN/Inf values",
        "the loss for NaN, the learning rate, mixed-precision overflow (loss scaling) and the inputs",
    ),
}
_HINTS["uniformity_pos"] = _HINTS["uniformity"]
_HINTS["effective_rank_centered"] = _HINTS["effective_rank"]
_GENERIC_HINT = ("the metric moved in the unhealthy direction", "the training curves around this step")


def _clear_window(st: _KeyState) -> int:
    """Clear samples in a row that resolve an open alert: RESOLVE_AFTER, doubled each time the condition came back
    soon after resolving (so a condition that flaps opens O(log n) alerts over n samples, not one per flap)."""
    return RESOLVE_AFTER * 2 ** min(st.reopens, 20)


def _hint(metric: str) -> tuple[str, str]:
    return _HINTS.get(metric, _GENERIC_HINT)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _float_to_json(x: float | None) -> Any:
    """Finite floats as numbers, NaN/Inf as strings, so ``json.dumps(..., allow_nan=False)`` works."""
    if x is None or math.isfinite(x):
        return x
    return repr(float(x))  # 'nan', 'inf', '-inf'


def _float_from_json(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclasses.dataclass
class _KeyState:
    """State of one (rule, key) pair. Plain data; :meth:`to_dict` is JSON-serialisable."""

    n: int = 0  # samples counted (finite ones; all of them for non-finite rules), warm-up included
    status: str = OK
    count: int = 0  # consecutive breaching samples
    last_fire: int | None = None  # `n` at the last fire
    fires: int = 0
    ref: float | None = None  # best value or baseline mean
    ref_step: int | None = None  # step of the best value
    base_sum: float = 0.0
    base_n: int = 0
    base_first_step: int | None = None
    base_last_step: int | None = None
    prev: float | None = None  # trend: previous value
    slope: float | None = None  # trend: smoothed slope
    alert: Alert | None = None  # the alert that fired, while firing
    ev: dict = dataclasses.field(default_factory=dict)  # evaluator state of drift / collapse rules (JSON-able)
    held: int = 0  # samples the open alert's condition has held (its `count`)
    clear: int = 0  # consecutive samples back inside by the hysteresis margin, while firing
    reopens: int = 0  # times it opened again soon after resolving (a flapping condition): doubles the clear window
    resolved_n: int | None = None  # `n` when it last resolved

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "alert"}
        if self.alert is not None:
            a = self.alert.to_dict()
            a["value"] = _float_to_json(a["value"])
            d["alert"] = a
        else:
            d["alert"] = None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _KeyState:
        alert = d.get("alert")
        if alert is not None:
            alert = Alert.from_dict({**alert, "value": _float_from_json(alert.get("value"))})
        status = d.get("status", OK)
        return cls(
            n=int(d.get("n", 0)),
            status=status if status in (OK, PENDING, FIRING) else OK,
            count=int(d.get("count", 0)),
            last_fire=d.get("last_fire"),
            fires=int(d.get("fires", 0)),
            ref=_float_from_json(d.get("ref")),
            ref_step=d.get("ref_step"),
            base_sum=float(d.get("base_sum", 0.0)),
            base_n=int(d.get("base_n", 0)),
            base_first_step=d.get("base_first_step"),
            base_last_step=d.get("base_last_step"),
            prev=_float_from_json(d.get("prev")),
            slope=_float_from_json(d.get("slope")),
            alert=alert,
            ev=dict(d.get("ev") or {}),
            held=int(d.get("held", 1 if status == FIRING else 0)),
            clear=int(d.get("clear", 0)),
            reopens=int(d.get("reopens", 0)),
            resolved_n=d.get("resolved_n"),
        )


class AlertEngine:
    """Evaluates alert rules on logged values and decides when each one fires.

    One state machine runs per (rule, key), counted in samples of that key. A condition that persists is ONE
    open alert, whatever the number of evaluations::

        ok --breach--> pending (count < patience) --patience reached--> firing: emit ONE Alert (status "fired")
        firing --still breaching--> firing: nothing, or a reminder (status "fired", `count` = samples held so far)
                                    once every `cooldown` samples when `cooldown` > 0
        firing --inside the hysteresis band, or a breach again--> firing (the clear run starts over)
        firing --back inside by the hysteresis margin on RESOLVE_AFTER (3) samples in a row--> ok:
                                    emit the "resolved" event (status "resolved", `count` = samples held);
                                    the window doubles each time the alert re-opens within twice the window
                                    after resolving (a flapping condition), and is back to 3 after a quiet spell
        ok/pending --breach, patience reached, `cooldown` samples since the last notification--> firing again

    So a condition that flaps (NaN on every other batch) stays one open alert instead of one alert per bad
    sample. A breach ends a pending run when a non-breaching sample arrives. Every emitted alert carries
    ``open_severity``: the worst severity still open after this update (``"ok"`` when none). Warm-up,
    references and non-finite handling are described in :mod:`spherewatch.alerts.rules`.

    ``loss_family`` (``"contrastive"``, ``"non_contrastive"``, ``"supervised"``, or ``None``: unknown) picks the
    advice at the end of each message (see :mod:`spherewatch.alerts.advice`); unknown keeps it neutral.

    Only metric keys are considered, of either key scheme (:mod:`spherewatch.keys`): ``<prefix>/<metric>`` is a
    metric of ``default_tap``, ``<prefix>/<tap>/<metric>`` one of ``tap`` (the alert counter
    ``<prefix>/alerts/count`` and fault keys ``<prefix>/monitor/...`` are not). Values that are not numbers are
    ignored.

    Args:
        rules: the rules (models or dicts, see :data:`~spherewatch.alerts.rules.RULE_ADAPTER`); names must be
            unique.
        prefix: the log-key prefix.
        default_tap: the tap of ``<prefix>/<metric>`` keys (what a rule's ``tap`` is matched against).
        key_scheme: the scheme the keys come in (``"short"`` or ``"tap"``); when given, :meth:`load_state_dict`
            renames the saved keys of the other scheme to this one, so a run resumed under another scheme keeps
            its references and open alerts. ``None``: keys are restored as saved.

    Example:
        >>> from spherewatch.alerts import AlertEngine, DegradationRule
        >>> engine = AlertEngine([DegradationRule(metric="uniformity", direction="rise", fraction=0.5)])
        >>> for step, u in enumerate([-3.4, -3.5, -3.0, -1.2]):
        ...     fired = engine.update(step, {"spherewatch/uniformity": u})
        >>> print(fired[0].message)  # doctest: +ELLIPSIS
        uniformity rose from -3.5 (best, step 1) to -1.2 (66% worse) at step 3 (tap 'embeddings'): embeddings are ...
    """

    def __init__(self, rules: Sequence[Any], *, prefix: str = "spherewatch", loss_family: str | None = None,
                 default_tap: str = "embeddings", key_scheme: str | None = None) -> None:
        from spherewatch.alerts.advice import check_family

        self.loss_family = check_family(loss_family)
        self._rules = parse_rules(list(rules))
        names = [r.name for r in self._rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"alert rule names must be unique, got {duplicates} more than once; give each rule a distinct `name=`"
            )
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise ValueError(f"`prefix` must be a non-empty string such as 'spherewatch', got {prefix!r}")
        self.prefix = prefix.strip("/")
        self.default_tap = default_tap
        self._keys = KeyScheme(self.prefix, default_tap, key_scheme) if key_scheme is not None else None
        self._states: dict[str, dict[str, _KeyState]] = {r.name: {} for r in self._rules}
        self._routes: dict[str, tuple[str, str, tuple[Any, ...]] | None] = {}  # key -> (tap, metric, rules)
        self._sample: Mapping[str, Any] = {}  # the values of the current update (evaluators read `<key>_stderr`)

    # ------------------------------------------------------------------------------------------------ public
    @property
    def rules(self) -> tuple[Any, ...]:
        """The validated rules, in evaluation order."""
        return self._rules

    @property
    def active(self) -> dict[str, Alert]:
        """Currently firing pairs: ``"<rule name>:<key>"`` -> the alert that fired."""
        return {
            f"{rule}:{key}": st.alert
            for rule, states in self._states.items()
            for key, st in states.items()
            if st.status == FIRING and st.alert is not None
        }

    def status(self, rule: str, key: str) -> str:
        """State of one pair: ``"ok"``, ``"pending"`` or ``"firing"`` (``"ok"`` when never seen)."""
        st = self._states.get(rule, {}).get(key)
        return OK if st is None else st.status

    def update(self, step: int, values: Mapping[str, Any]) -> list[Alert]:
        """Feed one sample of logged values and return the alerts that fired now.

        Args:
            step: the global step of the values.
            values: ``{"<prefix>/<tap>/<metric>": number}``; other keys and non-numbers are ignored.

        Returns:
            The new alerts, in rule order then key order. A pair that keeps breaching is not re-reported.
        """
        fired: list[Alert] = []
        if not values:
            return fired
        per_rule: dict[str, list[Alert]] = {}
        self._sample = values
        for key, raw in values.items():
            route = self._route(key)
            if route is None:
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            tap, metric, rules = route
            for rule in rules:
                states = self._states[rule.name]
                st = states.get(key)
                if st is None:
                    st = states[key] = _KeyState()
                alert = self._advance(rule, st, key, tap, metric, int(step), value)
                if alert is not None:
                    per_rule.setdefault(rule.name, []).append(alert)
        for rule in self._rules:
            fired.extend(per_rule.get(rule.name, ()))
        if fired:
            worst = self.open_severity()
            stamped = {id(a): dataclasses.replace(a, open_severity=worst) for a in fired}
            for states in self._states.values():  # the open alert kept in the state is the one delivered
                for st in states.values():
                    if st.alert is not None and id(st.alert) in stamped:
                        st.alert = stamped[id(st.alert)]
            fired = [stamped[id(a)] for a in fired]
        return fired

    def open_severity(self) -> str:
        """The worst severity among the open (firing) alerts, ``"ok"`` when none is open."""
        worst = None
        for states in self._states.values():
            for st in states.values():
                if st.status == FIRING and st.alert is not None:
                    if worst is None or _SEVERITY_ORDER.get(st.alert.severity, 1) > _SEVERITY_ORDER.get(worst, 1):
                        worst = st.alert.severity
        return worst or OK

    def reset(self) -> None:
        """Forget all state (references, counters, firing pairs)."""
        for states in self._states.values():
            states.clear()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (no tensors; NaN/Inf stored as strings) to resume identically."""
        return {
            "version": _STATE_VERSION,
            "prefix": self.prefix,
            "rules": [r.name for r in self._rules],
            "states": {rule: {key: st.to_dict() for key, st in states.items()} for rule, states in self._states.items()},
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Tolerant: missing fields take defaults, unknown rules are ignored."""
        if not isinstance(sd, Mapping):
            raise TypeError(f"Expected the dict returned by AlertEngine.state_dict(), got {type(sd).__name__}.")
        states = sd.get("states", {}) or {}
        for rule in self._rules:
            saved = states.get(rule.name, {}) or {}
            restored = {}
            for key, d in saved.items():
                st = _KeyState.from_dict(d)
                if self._keys is not None:  # saved under the other key scheme: continue under this one
                    key = self._keys.canonical(key)
                    if st.alert is not None and st.alert.key != key:
                        st.alert = dataclasses.replace(st.alert, key=key)
                restored[key] = st
            self._states[rule.name] = restored

    def __repr__(self) -> str:
        return f"AlertEngine(rules={[r.name for r in self._rules]}, prefix={self.prefix!r}, active={len(self.active)})"

    # ------------------------------------------------------------------------------------------------ internals
    def _route(self, key: str) -> tuple[str, str, tuple[Any, ...]] | None:
        if key in self._routes:
            return self._routes[key]
        route = None
        parts = parse_key(key, self.prefix, self.default_tap)
        if parts is not None:
            tap, metric = parts
            # a wildcard rule (e.g. the default `nonfinite` on "*") watches the metrics, not the sampling
            # errors and row counts logged beside them; a rule naming such a key watches it
            side = metric == "rows" or metric.endswith("_stderr")
            rules = tuple(r for r in self._rules if fnmatchcase(tap, r.tap) and fnmatchcase(metric, r.metric)
                          and not (side and metric != r.metric))
            route = (tap, metric, rules) if rules else None
        if len(self._routes) < 100_000:  # bounded cache
            self._routes[key] = route
        return route

    def _advance(
        self, rule: Any, st: _KeyState, key: str, tap: str, metric: str, step: int, value: float
    ) -> Alert | None:
        finite = math.isfinite(value)
        if isinstance(rule, NonFiniteRule):
            st.n += 1
            if st.n <= rule.warmup:
                return None
            breach, rearm, msg = (not finite), finite, None
            if not finite:
                msg = self._nonfinite_message(metric, tap, step, value)
        else:
            if not finite:  # never poisons the state of other rules
                return None
            st.n += 1
            if st.n <= rule.warmup:
                return None
            if isinstance(rule, ThresholdRule):
                breach, rearm, msg = self._eval_threshold(rule, value, metric, tap, step)
            elif isinstance(rule, DegradationRule):
                breach, rearm, msg = self._eval_degradation(rule, st, value, metric, tap, step)
            elif isinstance(rule, TrendRule):
                breach, rearm, msg = self._eval_trend(rule, st, value, metric, tap, step)
            else:
                breach, rearm, msg = self._eval_noise_aware(rule, st, key, value, metric, tap, step)

        if msg is not None:
            msg = self._advise(msg, metric)
        if st.status == FIRING:
            return self._while_firing(rule, st, key, step, value, breach, rearm, msg)
        if not breach:
            st.status, st.count = OK, 0
            return None
        st.count += 1
        cooled = st.last_fire is None or st.n - st.last_fire > rule.cooldown
        if st.count < rule.patience or not cooled:
            st.status = PENDING
            return None
        alert = Alert(
            rule=rule.name, key=key, value=value, step=step, severity=rule.severity, message=msg or rule.name,
            action=rule.action,
        )
        if st.resolved_n is not None and st.n - st.resolved_n <= 2 * _clear_window(st):
            st.reopens += 1  # back soon after it resolved: the same condition flapping, resolve more slowly
        else:
            st.reopens = 0
        st.status, st.alert, st.last_fire, st.held, st.clear = FIRING, alert, st.n, 1, 0
        st.fires += 1
        return alert

    @staticmethod
    def _while_firing(rule, st: _KeyState, key: str, step: int, value: float, breach: bool, rearm: bool, msg):
        """An open alert: count, remind per cooldown, resolve after RESOLVE_AFTER clear samples."""
        if breach:
            st.held += 1
            st.clear = 0
            if rule.cooldown > 0 and st.last_fire is not None and st.n - st.last_fire >= rule.cooldown:
                st.last_fire = st.n
                return Alert(
                    rule=rule.name, key=key, value=value, step=step, severity=rule.severity,
                    message=msg or rule.name, action="log", count=st.held,  # a reminder never stops twice
                )
            return None
        st.clear = st.clear + 1 if rearm else 0
        if st.clear < _clear_window(st):
            return None
        opened = st.alert
        resolved = Alert(
            rule=rule.name, key=key, value=value, step=step, severity=opened.severity if opened else rule.severity,
            message=(f"{rule.name} on {key} resolved at step {step}: back inside the threshold on {st.clear} "
                     f"samples in a row (opened at step {opened.step if opened else '?'}, held {st.held} samples)"),
            status="resolved", count=st.held,
        )
        st.status, st.count, st.alert, st.held, st.clear, st.resolved_n = OK, 0, None, 0, 0, st.n
        return resolved

    def _advise(self, msg: str, metric: str) -> str:
        """Swap the ``Check ...`` advice of ``msg`` for the one that fits the loss family (neutral when unknown)."""
        from spherewatch.alerts.advice import advise

        return advise(msg, _hint(metric)[1], metric, self.loss_family)

    # Each evaluator returns (breach, rearm, message-if-it-fires) and updates the references it owns.
    @staticmethod
    def _eval_threshold(rule: ThresholdRule, value: float, metric: str, tap: str, step: int):
        h = rule.hysteresis
        above = rule.above is not None and value > rule.above
        below = rule.below is not None and value < rule.below
        rearm = (rule.above is None or value <= rule.above - h) and (rule.below is None or value >= rule.below + h)
        msg = None
        if above or below:
            what, check = _hint(metric)
            limit = f"rose above {_fmt(rule.above)}" if above else f"fell below {_fmt(rule.below)}"
            msg = f"{metric} {limit} to {_fmt(value)} at step {step} (tap '{tap}'): {what}. Check {check}."
        return above or below, rearm, msg

    @staticmethod
    def _eval_degradation(rule: DegradationRule, st: _KeyState, value: float, metric: str, tap: str, step: int):
        bad = 1.0 if rule.direction == "rise" else -1.0  # sign of a change in the unhealthy direction
        if rule.reference == "baseline":
            if st.base_n < rule.baseline_samples:
                st.base_sum += value
                st.base_n += 1
                st.base_first_step = step if st.base_first_step is None else st.base_first_step
                st.base_last_step = step
                if st.base_n == rule.baseline_samples:
                    st.ref = st.base_sum / st.base_n
                return False, True, None
            ref = st.ref
            ref_desc = (
                f"baseline, step {st.base_first_step}" if st.base_n == 1
                else f"baseline, mean of steps {st.base_first_step}-{st.base_last_step}"
            )
        else:
            if st.ref is None:
                st.ref, st.ref_step = value, step
                return False, True, None
            ref = st.ref
            ref_desc = f"best, step {st.ref_step}"
            if bad * (value - ref) < 0:  # a new best (after the comparison below, which it cannot breach)
                st.ref, st.ref_step = value, step
        drop = bad * (value - ref)
        allowed = max(rule.fraction * abs(ref), rule.min_drop)
        breach = drop > allowed
        rearm = drop <= allowed - rule.hysteresis * abs(ref)
        msg = None
        if breach:
            what, check = _hint(metric)
            verb = "rose" if rule.direction == "rise" else "fell"
            worse = f" ({drop / abs(ref):.0%} worse)" if ref != 0 else ""
            msg = (
                f"{metric} {verb} from {_fmt(ref)} ({ref_desc}) to {_fmt(value)}{worse} at step {step} "
                f"(tap '{tap}'): {what}. Check {check}."
            )
        return breach, rearm, msg

    @staticmethod
    def _eval_trend(rule: TrendRule, st: _KeyState, value: float, metric: str, tap: str, step: int):
        if st.prev is None:
            st.prev = value
            return False, True, None
        d = value - st.prev
        st.prev = value
        s = d if st.slope is None else rule.ewma * d + (1.0 - rule.ewma) * st.slope
        st.slope = s
        bad = s if rule.direction == "rise" else -s
        breach = bad > rule.slope
        rearm = bad <= rule.slope - rule.hysteresis
        msg = None
        if breach:
            what, check = _hint(metric)
            verb = "rising" if rule.direction == "rise" else "falling"
            msg = (
                f"{metric} is {verb} fast: smoothed change {s:+.3g} per sample (limit {rule.slope:g}), now "
                f"{_fmt(value)} at step {step} (tap '{tap}'): {what}. Check {check}."
            )
        return breach, rearm, msg

    # --------------------------------------------------------------------- rules that know the run's own noise
    def _eval_noise_aware(self, rule: Any, st: _KeyState, key: str, value: float, metric: str, tap: str, step: int):
        se = self._stderr(key)
        if isinstance(rule, DriftRule):
            return self._eval_drift(rule, st.ev, value, se, metric, tap, step)
        if isinstance(rule, CollapseRule):
            return self._eval_collapse(rule, st.ev, value, se, metric, tap, step)
        raise TypeError(f"unsupported rule type {type(rule).__name__}")  # pragma: no cover - parse_rules admits none

    def _stderr(self, key: str) -> float:
        """The standard error logged beside ``key`` in this sample (``<key>_stderr``), 0 when absent."""
        try:
            se = float(self._sample.get(key + "_stderr", 0.0))
        except (TypeError, ValueError):
            return 0.0
        return se if math.isfinite(se) and se > 0 else 0.0

    @staticmethod
    def _eval_drift(rule: DriftRule, ev: dict, value: float, se: float, metric: str, tap: str, step: int):
        bad = 1.0 if rule.direction == "rise" else -1.0
        prev = ev.get("prev")  # [value, se] of the previous sample
        ev["prev"] = [value, se]
        ref = ev.get("ref")
        if ref is None:  # still in the initial transient: find out whether it is over
            if prev is None:
                return False, True, None
            delta, last = value - prev[0], ev.get("delta")
            biggest = float(ev.get("biggest", 0.0))
            ev["delta"], ev["biggest"] = delta, max(biggest, abs(delta))
            within_noise = abs(delta) <= rule.z * math.sqrt(se * se + prev[1] * prev[1])
            turned = last is not None and delta * last < 0
            slowed = last is not None and abs(delta) <= rule.settle_ratio * biggest
            if within_noise or turned or slowed:
                ev.update(ref=value, ref_se=se, ref_step=step, obs_var=0.0)
            return False, True, None  # the settling sample itself is never compared
        ref_se, obs_var = float(ev.get("ref_se", 0.0)), float(ev.get("obs_var", 0.0))
        noise = math.sqrt(se * se + ref_se * ref_se + obs_var)
        room = abs(rule.collapsed - ref)
        limit = max(rule.z * noise, rule.fraction * room)
        dev = bad * (value - ref)
        breach = dev > limit
        rearm = dev <= limit - rule.hysteresis * room
        if not breach and prev is not None:
            # the run's own variability around its level: moving average of half the squared step-to-step change
            obs_var = 0.7 * obs_var + 0.3 * 0.5 * (value - prev[0]) ** 2
            ev["obs_var"] = obs_var
            level = 0.5 * (value + prev[0])
            if bad * (level - ref) < 0:  # a better level than the reference (smoothed over two samples): follow it
                ev.update(ref=level, ref_se=se, ref_step=step)
        msg = None
        if breach:
            what, check = _hint(metric)
            verb = "rose" if rule.direction == "rise" else "fell"
            lost = f"{dev / room:.0%} of the way to collapse ({_fmt(rule.collapsed)})" if room > 0 else "toward collapse"
            times = f"{dev / noise:.1f}x" if noise > 0 else "far beyond"
            msg = (
                f"{metric} {verb} from its settled level {_fmt(ref)} (step {ev.get('ref_step')}) to {_fmt(value)} at "
                f"step {step} (tap '{tap}'): {lost}, {times} the run's noise ({_fmt(noise)}). {what}. Check {check}."
            )
        return breach, rearm, msg

    @staticmethod
    def _eval_collapse(rule: CollapseRule, ev: dict, value: float, se: float, metric: str, tap: str, step: int):
        dist = abs(value - rule.collapsed)
        far = max(float(ev.get("far", 0.0)), dist)
        ev["far"] = far
        margin = rule.margin * far if rule.relative else rule.margin
        prev = ev.get("prev")  # [distance, se] of the previous sample
        ev["prev"] = [dist, se]
        in_zone = dist <= margin
        rearm = dist > margin * (1.0 + rule.hysteresis)
        if not in_zone or prev is None:
            return False, rearm, None
        prev_dist, prev_se = float(prev[0]), float(prev[1])
        fell_in = prev_dist > margin
        recovering = (dist - prev_dist) > max(rule.z * math.sqrt(se * se + prev_se * prev_se), 0.02 * margin)
        breach = fell_in or not recovering
        msg = None
        if breach:
            what, check = _hint(metric)
            how = "fell into" if fell_in else "stays in"
            msg = (
                f"{metric} {how} the collapse zone at step {step} (tap '{tap}'): {_fmt(value)}, within "
                f"{_fmt(margin)} of the collapsed value {_fmt(rule.collapsed)} and not recovering. {what}. Check {check}."
            )
        return breach, rearm, msg

    @staticmethod
    def _nonfinite_message(metric: str, tap: str, step: int, value: float) -> str:
        what = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
        return (
            f"{metric} is {what} at step {step} (tap '{tap}'): the embeddings or the metric computation produced "
            "non-finite numbers. Check the loss for NaN, the learning rate, mixed-precision overflow (loss scaling) "
            "and the inputs."
        )
