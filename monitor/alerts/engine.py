"""The alert engine: one state machine per (rule, key) over the logged values.

What a sample means for a rule (breach, re-arm, message, the references it keeps) is decided by the evaluator of the
rule's kind (:mod:`spherewatch.alerts.evaluators`, looked up by ``rule.kind``); the engine keeps only what every kind
shares: routing keys to rules, warm-up, patience, cooldown, firing and resolving, reminders, the worst open
severity (in the order of :mod:`spherewatch.alerts.verdict`) and the checkpoint state.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import operator
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from spherewatch.alerts.advice import LOSS_CLASS_FAMILIES, advise, check_family
from spherewatch.alerts.alert import Alert
from spherewatch.alerts.evaluators import RuleEvaluator, Sample, evaluator_for
from spherewatch.alerts.rules import families_switching_on, parse_rules, rules_for_family
from spherewatch.alerts.verdict import OK, worst_severity
from spherewatch.catalogue import hint as _hint
from spherewatch.delivery.record import decode_float, encode_float
from spherewatch.keys import KeyScheme, parse_key

__all__ = ["FIRING", "OK", "PENDING", "AlertEngine"]

_log = logging.getLogger("spherewatch")

#: States of one (rule, key) pair, besides ``OK`` (``"ok"``, from :mod:`spherewatch.alerts.verdict`).
PENDING, FIRING = "pending", "firing"
_STATE_VERSION = 2
#: Consecutive samples back inside the threshold (by the rule's hysteresis margin) that resolve an open alert.
RESOLVE_AFTER = 3


def _clear_window(st: _KeyState) -> int:
    """Clear samples in a row that resolve an open alert: RESOLVE_AFTER, doubled each time the condition came back
    soon after resolving (so a condition that flaps opens O(log n) alerts over n samples, not one per flap)."""
    return RESOLVE_AFTER * 2 ** min(st.reopens, 20)


def _float_to_json(x: float | None) -> Any:
    """Finite floats as numbers, NaN/Inf as the record codec's strings (``json.dumps(..., allow_nan=False)`` works);
    ``None`` stays ``None``."""
    return None if x is None else encode_float(x)


def _float_from_json(x: Any) -> float | None:
    """Inverse of :func:`_float_to_json`; checkpoints written before the codec (``'nan'``, ``'inf'``) read too."""
    return None if x is None else decode_float(x)


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
    ev: dict = dataclasses.field(default_factory=dict)  # evaluator state of drift / collapse / new kinds (JSON-able)
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
    references and non-finite handling are described in :mod:`spherewatch.alerts.rules`; each kind's breach and
    re-arm conditions live in its evaluator (:mod:`spherewatch.alerts.evaluators`).

    ``loss_family`` (one of :data:`~spherewatch.alerts.advice.LOSS_FAMILIES`, or ``None``: unknown) picks the
    advice at the end of each message (see :mod:`spherewatch.alerts.advice`); unknown keeps it neutral.

    Only metric keys are considered, of either key scheme (:mod:`spherewatch.keys`): ``<prefix>/<metric>`` is a
    metric of ``default_tap``, ``<prefix>/<tap>/<metric>`` one of ``tap`` (the alert counter
    ``<prefix>/alerts/count`` and fault keys ``<prefix>/monitor/...`` are not). Values that are not numbers are
    ignored.

    Args:
        rules: the rules (models or dicts, see :data:`~spherewatch.alerts.rules.RULE_ADAPTER`); names must be
            unique; each rule's kind must have an evaluator (a ``TypeError`` lists the kinds that have one).
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
        self.loss_family = check_family(loss_family)
        # each rule as it applies to this run's loss family (its `by_family` settings for it; a rule switched off for
        # this family is not evaluated)
        parsed = parse_rules(list(rules))
        self._rules = rules_for_family(parsed, self.loss_family)
        # with no family set: the rules that only some family switches on, said once when their metric is seen
        self._family_only = [] if self.loss_family is not None else [
            (r, families) for r in parsed if not r.for_family(None).enabled and (families := families_switching_on(r))]
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
        self._evaluators: dict[str, RuleEvaluator] = {r.name: evaluator_for(r) for r in self._rules}
        self._states: dict[str, dict[str, _KeyState]] = {r.name: {} for r in self._rules}
        self._routes: dict[str, tuple[str, str, tuple[Any, ...]] | None] = {}  # key -> (tap, metric, rules)
        self._sample: Mapping[str, Any] = {}  # the values of the current update (evaluators read `<key>_stderr`)
        self._taps_checked = False
        self._change: dict[str, Any] | None = None  # a recipe change the user marked, while its window is open
        self._last: dict[str, list[Any]] = {}  # watched key -> [step, value] of its latest finite sample
        #: One line per rule whose ``tap`` pattern matched none of the taps of the first evaluation (it can never
        #: fire); each was logged once as a warning on the ``spherewatch`` logger.
        self.rule_warnings: list[str] = []
        #: One line per rule that is on only for some loss families while ``loss_family`` is not set, once a metric
        #: it watches is seen (logged once at INFO: e.g. ``redundancy_rise``, Barlow Twins' and VICReg's collapse).
        self.rule_notes: list[str] = []

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
        step = int(step)
        if not self._taps_checked:
            self._check_taps(values)
        if self._family_only:
            self._note_family_only(values)
        ended = self._change if self._change is not None and step >= self._change["until"] else None
        if ended is not None:  # the marked change has settled: every pair without an open alert starts over here
            self._change = None
            self._restart()
        pausing = self._change is not None and step >= self._change["step"]
        for key, raw in values.items():
            route = self._route(key)
            if route is None:
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            tap, metric, rules = route
            if math.isfinite(value) and any(not self._evaluators[r.name].sees_nonfinite for r in rules):
                self._remember(key, step, value)  # a watched metric's latest value (a marked change's "before")
            for rule in rules:
                states = self._states[rule.name]
                st = states.get(key)
                if st is None:
                    st = states[key] = _KeyState()
                if pausing and st.status != FIRING and not self._evaluators[rule.name].sees_nonfinite:
                    continue  # inside a marked change's window: only open alerts and non-finite values are judged
                alert = self._advance(rule, st, key, tap, metric, step, value)
                if alert is not None:
                    per_rule.setdefault(rule.name, []).append(alert)
        if ended is not None:
            fired.extend(self._change_events(ended, step))
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

    def requested_step(self, after: int) -> int | None:
        """The earliest step after ``after`` at which a rule asked for a sample outside the schedule (an evaluator's
        ``st.ev["sample_at"]``: a collapse zone entered at the first trained sample, to be confirmed), or ``None``.
        Every rank's engine holds the same states (the same gathered values), so every rank asks for the same step."""
        steps = [int(st.ev["sample_at"]) for states in self._states.values() for st in states.values()
                 if st.ev.get("sample_at") is not None and int(st.ev["sample_at"]) > after]
        return min(steps, default=None)

    def mark_change(self, step: int, what: str = "", settle_steps: int = 100) -> None:
        """Say that the recipe changed at ``step`` (stronger augmentations, new loss weights, new data, a new head).

        The geometry may move at once and settle at a new level, and a rule that compares the run with its own
        past would call that a collapse. So the samples of steps ``step`` to ``step + settle_steps - 1`` start no
        alert (an alert already open is still judged and may resolve; a non-finite value is always reported), and
        the first sample from ``step + settle_steps`` on reports ONE ``info`` event per tap, ``kind="regime_change"``,
        ``rule="marked_change"``: what each watched metric was before the change and is now. From that sample the
        rules start over, as at the start of a run, with the new level as the run's first sample: a collapse from
        there is alerted as usual. A second mark inside the window extends it.

        Args:
            step: the first step trained under the new recipe.
            what: what changed, in the user's words (repeated in the event).
            settle_steps: how long the geometry is given to settle (the Monitor's default: two evaluation
                intervals).
        """
        step, settle_steps, what = check_change(step, settle_steps, what)
        if self._change is not None:  # a second change inside the window: one window over both
            prev = self._change
            whats = [w for w in (prev["what"], what) if w]
            self._change = {**prev, "step": min(prev["step"], step), "what": "; ".join(whats),
                            "until": max(prev["until"], step + settle_steps)}
            return
        self._change = {"step": step, "what": what, "until": step + settle_steps,
                        "before": {k: v for k, v in self._last.items() if v[0] < step}}

    @property
    def marked_change(self) -> dict[str, Any] | None:
        """The marked recipe change whose window is open (``{"step", "what", "until", "before"}``), else ``None``."""
        return None if self._change is None else dict(self._change)

    def open_severity(self) -> str:
        """The worst severity among the open (firing) alerts, ``"ok"`` when none is open."""
        return worst_severity(st.alert.severity for states in self._states.values() for st in states.values()
                              if st.status == FIRING and st.alert is not None)

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
            "change": None if self._change is None else {**self._change, "before": _values_to_json(self._change["before"])},
            "last": _values_to_json(self._last),
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
        self._last = self._values_from_json(sd.get("last"))
        change = sd.get("change")
        self._change = None if not change else {
            "step": int(change["step"]), "what": str(change.get("what", "")), "until": int(change["until"]),
            "before": self._values_from_json(change.get("before")),
        }

    def __repr__(self) -> str:
        return f"AlertEngine(rules={[r.name for r in self._rules]}, prefix={self.prefix!r}, active={len(self.active)})"

    # ------------------------------------------------------------------------------------------------ internals
    def _check_taps(self, values: Mapping[str, Any]) -> None:
        """At the first evaluation with metric keys: warn once per rule whose ``tap`` pattern matches no tap seen (a
        typo such as ``tap: encodr`` would otherwise give no alert, ever, and no sign of why)."""
        taps = []
        for key in values:
            parts = parse_key(key, self.prefix, self.default_tap)
            if parts is not None and parts[0] not in taps:
                taps.append(parts[0])
        if not taps:
            return
        self._taps_checked = True
        for rule in self._rules:
            if any(fnmatchcase(tap, rule.tap) for tap in taps):
                continue
            close = difflib.get_close_matches(rule.tap, taps, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            text = (f"alert rule {rule.name!r} watches tap {rule.tap!r} but the monitor saw taps {sorted(taps)}{hint} "
                    "It can never fire: fix its `tap` (an fnmatch pattern on the tap name).")
            self.rule_warnings.append(text)
            _log.warning("spherewatch: %s", text)

    def _note_family_only(self, values: Mapping[str, Any]) -> None:
        """Once per rule that is off because no loss family is set (but on for some): when a metric it watches is
        logged, say which ``loss_family`` switches it on (it can never fire otherwise)."""
        metrics = {parts[1] for key in values if (parts := parse_key(key, self.prefix, self.default_tap)) is not None}
        for rule, families in list(self._family_only):
            if not any(fnmatchcase(m, rule.metric) for m in metrics):
                continue
            self._family_only.remove((rule, families))
            losses = [name for name, family in LOSS_CLASS_FAMILIES.items() if family in families][:3]
            like = f" ({', '.join(losses)}, ...)" if losses else ""
            text = (f"alert rule {rule.name!r} on {rule.metric} is on only for loss_family in {families}; none is "
                    f"set, so it is off. If the loss is a {families[0]} one{like}, pass loss_family={families[0]!r} "
                    "(the Lightning and HF callbacks infer it from a loss module in the model)")
            self.rule_notes.append(text)
            _log.info("spherewatch: %s", text)

    def _remember(self, key: str, step: int, value: float) -> None:
        """Keep the latest finite value of a watched key (what a marked change's event compares with); bounded."""
        if key in self._last or len(self._last) < 10_000:
            self._last[key] = [step, value]

    def _restart(self) -> None:
        """Every (rule, key) pair without an open alert starts over, as at the start of a run."""
        for states in self._states.values():
            for key, st in list(states.items()):
                if st.status != FIRING:
                    states[key] = _KeyState()

    def _change_events(self, change: Mapping[str, Any], step: int) -> list[Alert]:
        """The end of a marked change's window at ``step``: one ``regime_change`` info event per tap, each watched
        metric before the change and now (the ones logged at ``step``)."""
        per_tap: dict[str, list[tuple[str, str, float, list[Any]]]] = {}
        for key, old in change["before"].items():
            now, route = self._last.get(key), self._route(key)
            if now is not None and now[0] == step and route is not None:
                tap, metric, _ = route
                per_tap.setdefault(tap, []).append((key, metric, now[1], old))
        events = []
        what = f" ({change['what']})" if change["what"] else ""
        for tap, moved in per_tap.items():
            steps = sorted({old[0] for _, _, _, old in moved})
            since = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
            parts = ", ".join(f"{metric} {_fmt(old[1])} -> {_fmt(value)}" for _, metric, value, old in moved)
            key, _, value, _ = moved[0]
            message = (f"the recipe changed at step {change['step']}{what} (tap '{tap}'); from {since} to step "
                       f"{step}: {parts}. The rules watch from this level on, as at the start of a run: a collapse "
                       f"from here is alerted as usual")
            events.append(Alert(rule="marked_change", key=key, value=value, step=step, severity="info",
                                message=message, kind="regime_change"))
        return events

    def _values_from_json(self, values: Mapping[str, Any] | None) -> dict[str, list[Any]]:
        """``{key: [step, value]}`` as saved by :func:`_values_to_json`, keys in this engine's key scheme."""
        canonical = self._keys.canonical if self._keys is not None else (lambda k: k)
        return {canonical(k): [int(v[0]), _float_from_json(v[1])] for k, v in (values or {}).items()}

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
        """Judge one sample with the rule's evaluator, then move the pair's state machine."""
        evaluator = self._evaluators[rule.name]
        if not (evaluator.sees_nonfinite or math.isfinite(value)):  # never poisons the state of other rules
            return None
        st.n += 1
        if st.n <= rule.warmup:
            return None
        breach, rearm, msg = evaluator.judge(rule, st, Sample(value, metric, tap, step, self._stderr(key)))
        if msg is not None:  # the advice that fits the loss family (neutral when unknown)
            msg = advise(msg, _hint(metric)[1], metric, self.loss_family)
        if st.status == FIRING:
            return _while_firing(rule, st, key, step, value, breach, rearm, msg)
        if not breach:
            st.status, st.count = OK, 0
            return None
        st.count += 1
        cooled = st.last_fire is None or st.n - st.last_fire > rule.cooldown
        if st.count < rule.patience or not cooled:
            st.status = PENDING
            return None
        # a one-shot event (the evaluator's `event` kind): never open; silent while a collapse alert on the tap is open
        if evaluator.event is not None:
            st.status, st.count = OK, 0
            if any(s.status == FIRING and s.alert is not None and s.alert.kind == "collapse"
                   and (self._routes.get(k) or ("",))[0] == tap
                   for states in self._states.values() for k, s in states.items()):
                return None
            return Alert(rule=rule.name, key=key, value=value, step=step, severity=rule.severity,
                         message=msg or rule.name, action=rule.action, kind=evaluator.event)
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

    def _stderr(self, key: str) -> float:
        """The standard error logged beside ``key`` in this sample (``<key>_stderr``), 0 when absent."""
        try:
            se = float(self._sample.get(key + "_stderr", 0.0))
        except (TypeError, ValueError):
            return 0.0
        return se if math.isfinite(se) and se > 0 else 0.0


#: How many evaluation intervals a marked recipe change is given to settle by default (``Monitor.mark_change``).
SETTLE_INTERVALS = 2


def default_settle(every_n_steps: int) -> int:
    """The default ``settle_steps`` of a marked change for a monitor evaluating every ``every_n_steps`` steps."""
    return SETTLE_INTERVALS * int(every_n_steps)


def check_change(step: Any, settle_steps: Any, what: Any = "") -> tuple[int, int, str]:
    """``(step, settle_steps, what)`` of :meth:`AlertEngine.mark_change`: the two as ints (else a ``ValueError``
    naming the value), ``what`` as one line of text without NUL (what separates a mark's fields between ranks)."""
    def whole(x: Any) -> int | None:
        if isinstance(x, bool):
            return None
        try:
            return operator.index(x)
        except TypeError:
            return None

    if whole(step) is None or whole(step) < 0:
        raise ValueError(f"mark_change: `step` must be an int >= 0 (the first step of the new recipe), got {step!r}")
    if whole(settle_steps) is None or whole(settle_steps) < 1:
        raise ValueError(f"mark_change: `settle_steps` must be an int >= 1, got {settle_steps!r}; it is how many "
                         "steps the geometry is given to settle after the change (e.g. two evaluation intervals)")
    return whole(step), whole(settle_steps), " ".join(str(what or "").replace("\0", " ").split())


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _values_to_json(values: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    """``{key: [step, value]}`` JSON-able (NaN/Inf as the record codec's strings)."""
    return {k: [int(v[0]), _float_to_json(v[1])] for k, v in values.items()}


def _while_firing(rule: Any, st: _KeyState, key: str, step: int, value: float, breach: bool, rearm: bool,
                  msg: str | None) -> Alert | None:
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
