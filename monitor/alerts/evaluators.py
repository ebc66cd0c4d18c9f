"""One evaluator per rule kind, looked up by the rule's ``kind``: what a sample means for a rule.

An evaluator judges one post-warm-up sample of one key for one rule and updates the references it owns (the best
value, the baseline, the smoothed slope, the settled level): it returns a :class:`Judgement` -- does the sample
breach, is it back inside by the hysteresis margin (re-arm), and the message to send if the rule fires. The
:class:`~spherewatch.alerts.engine.AlertEngine` keeps everything else (warm-up, patience, cooldown, firing and
resolving, reminders, checkpoint state) and is the same for every kind.

Adding a rule kind takes two files: its rule model in :mod:`spherewatch.alerts.rules` (with its ``kind`` literal,
in the ``Rule`` union) and its evaluator here, registered under that kind::

    @register("my_kind")
    def _judge_my_kind(rule, st, s: Sample) -> Judgement:
        breach = s.value > rule.limit
        return Judgement(breach, s.value <= rule.limit - rule.hysteresis, f"{s.metric} ..." if breach else None)

``st`` is the (rule, key) state: an evaluator keeps plain JSON-able data in it (``st.ev`` for new kinds), so a
checkpoint resumes it. An evaluator that needs its next sample sooner than the schedule gives it sets
``st.ev["sample_at"]`` to that step (:meth:`~spherewatch.alerts.engine.AlertEngine.requested_step`; the Monitor
evaluates there too); once that step has passed it is no longer a request.

Example:
    >>> from spherewatch.alerts.rules import ThresholdRule
    >>> rule = ThresholdRule(metric="mean_cosine", above=0.9)
    >>> evaluator_for(rule).judge(rule, None, Sample(0.95, "mean_cosine", "embeddings", 7, 0.0)).breach
    True
"""
from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Any, Callable, NamedTuple, Optional

from spherewatch.catalogue import hint

__all__ = ["EVALUATORS", "Judgement", "RuleEvaluator", "Sample", "evaluator_for", "register"]


class Sample(NamedTuple):
    """One value of one key, as an evaluator sees it."""

    value: float
    metric: str
    tap: str
    step: int
    stderr: float  # the `<key>_stderr` logged in the same update (finite, > 0), else 0


class Judgement(NamedTuple):
    """What a sample means for a rule: ``breach`` (the condition holds), ``rearm`` (back inside by the hysteresis
    margin; an open alert resolves after enough of these in a row) and the message to send if it fires."""

    breach: bool
    rearm: bool
    message: Optional[str]


@dataclasses.dataclass(frozen=True)
class RuleEvaluator:
    """A rule kind's evaluator: ``judge(rule, state, sample) -> Judgement``; ``sees_nonfinite``: NaN/Inf samples
    reach it and count as samples (every other kind never sees them, so one NaN cannot poison a reference);
    ``event``: ``None`` for a collapse alert (opened, reminded, resolved), else the ``Alert.kind`` of a one-shot event
    the rule reports instead (never open, never resolved, silent while a collapse alert on the same tap is open)."""

    kind: str
    judge: Callable[[Any, Any, Sample], Judgement]
    sees_nonfinite: bool = False
    event: Optional[str] = None


#: Rule kind -> its evaluator.
EVALUATORS: dict[str, RuleEvaluator] = {}


def register(kind: str, *, sees_nonfinite: bool = False,
             event: Optional[str] = None) -> Callable[[Callable], Callable]:
    """Register the decorated ``judge(rule, state, sample)`` as the evaluator of rules whose ``kind`` is ``kind``
    (``sees_nonfinite``, ``event``: see :class:`RuleEvaluator`)."""

    def add(judge: Callable[[Any, Any, Sample], Judgement]) -> Callable[[Any, Any, Sample], Judgement]:
        if kind in EVALUATORS:
            raise ValueError(f"rule kind {kind!r} already has an evaluator ({EVALUATORS[kind].judge.__name__})")
        EVALUATORS[kind] = RuleEvaluator(kind, judge, sees_nonfinite, event)
        return judge

    return add


def evaluator_for(rule: Any) -> RuleEvaluator:
    """The evaluator of ``rule``'s kind.

    Raises:
        TypeError: no evaluator is registered for that kind (the message lists the kinds that have one).
    """
    kind = getattr(rule, "kind", None)
    try:
        return EVALUATORS[kind]
    except KeyError:
        raise TypeError(
            f"no evaluator for rule kind {kind!r} ({type(rule).__name__}); registered kinds: "
            f"{', '.join(sorted(EVALUATORS))}. Register one with @spherewatch.alerts.evaluators.register({kind!r})"
        ) from None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _fired(s: Sample, text: str) -> str:
    """``text`` with the tap and the metric's meaning and check appended: the common shape of an alert message."""
    what, check = hint(s.metric)
    return f"{text} (tap '{s.tap}'): {what}. Check {check}."


# ------------------------------------------------------------------------------------------- simple rules
@register("threshold")
def _judge_threshold(rule: Any, st: Any, s: Sample) -> Judgement:
    value, h = s.value, rule.hysteresis
    above = rule.above is not None and value > rule.above
    below = rule.below is not None and value < rule.below
    rearm = (rule.above is None or value <= rule.above - h) and (rule.below is None or value >= rule.below + h)
    msg = None
    if above or below:
        limit = f"rose above {_fmt(rule.above)}" if above else f"fell below {_fmt(rule.below)}"
        msg = _fired(s, f"{s.metric} {limit} to {_fmt(value)} at step {s.step}")
    return Judgement(above or below, rearm, msg)


@register("degradation")
def _judge_degradation(rule: Any, st: Any, s: Sample) -> Judgement:
    value, step = s.value, s.step
    bad = 1.0 if rule.direction == "rise" else -1.0  # sign of a change in the unhealthy direction
    if rule.reference == "baseline":
        if st.base_n < rule.baseline_samples:
            st.base_sum += value
            st.base_n += 1
            st.base_first_step = step if st.base_first_step is None else st.base_first_step
            st.base_last_step = step
            if st.base_n == rule.baseline_samples:
                st.ref = st.base_sum / st.base_n
            return Judgement(False, True, None)
        ref = st.ref
        ref_desc = (
            f"baseline, step {st.base_first_step}" if st.base_n == 1
            else f"baseline, mean of steps {st.base_first_step}-{st.base_last_step}"
        )
    else:
        if st.ref is None:
            st.ref, st.ref_step = value, step
            return Judgement(False, True, None)
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
        verb = "rose" if rule.direction == "rise" else "fell"
        worse = f" ({drop / abs(ref):.0%} worse)" if ref != 0 else ""
        msg = _fired(s, f"{s.metric} {verb} from {_fmt(ref)} ({ref_desc}) to {_fmt(value)}{worse} at step {step}")
    return Judgement(breach, rearm, msg)


@register("trend")
def _judge_trend(rule: Any, st: Any, s: Sample) -> Judgement:
    if st.prev is None:
        st.prev = s.value
        return Judgement(False, True, None)
    d = s.value - st.prev
    st.prev = s.value
    slope = d if st.slope is None else rule.ewma * d + (1.0 - rule.ewma) * st.slope
    st.slope = slope
    bad = slope if rule.direction == "rise" else -slope
    breach = bad > rule.slope
    rearm = bad <= rule.slope - rule.hysteresis
    msg = None
    if breach:
        verb = "rising" if rule.direction == "rise" else "falling"
        msg = _fired(s, f"{s.metric} is {verb} fast: smoothed change {slope:+.3g} per sample (limit {rule.slope:g}), "
                        f"now {_fmt(s.value)} at step {s.step}")
    return Judgement(breach, rearm, msg)


@register("nonfinite", sees_nonfinite=True)
def _judge_nonfinite(rule: Any, st: Any, s: Sample) -> Judgement:
    if math.isfinite(s.value):
        return Judgement(False, True, None)
    what = "NaN" if math.isnan(s.value) else ("+Inf" if s.value > 0 else "-Inf")
    return Judgement(True, False, (
        f"{s.metric} is {what} at step {s.step} (tap '{s.tap}'): the embeddings or the metric computation produced "
        "non-finite numbers. Check the loss for NaN, the learning rate, mixed-precision overflow (loss scaling) "
        "and the inputs."
    ))


# --------------------------------------------------------------------- rules that know the run's own noise
@register("drift")
def _judge_drift(rule: Any, st: Any, s: Sample) -> Judgement:
    ev, value, se = st.ev, s.value, s.stderr
    bad = 1.0 if rule.direction == "rise" else -1.0
    prev = ev.get("prev")  # [value, se] of the previous sample
    ev["prev"] = [value, se]
    ref = ev.get("ref")
    if ref is None:  # still in the initial transient: find out whether it is over
        if prev is None:
            return Judgement(False, True, None)
        delta, last = value - prev[0], ev.get("delta")
        biggest = float(ev.get("biggest", 0.0))
        ev["delta"], ev["biggest"] = delta, max(biggest, abs(delta))
        within_noise = abs(delta) <= rule.z * math.sqrt(se * se + prev[1] * prev[1])
        turned = last is not None and delta * last < 0
        slowed = last is not None and abs(delta) <= rule.settle_ratio * biggest
        if within_noise or turned or slowed:
            ev.update(ref=value, ref_se=se, ref_step=s.step, obs_var=0.0)
        return Judgement(False, True, None)  # the settling sample itself is never compared
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
            ev.update(ref=level, ref_se=se, ref_step=s.step)
    msg = None
    if breach:
        what, check = hint(s.metric)
        verb = "rose" if rule.direction == "rise" else "fell"
        lost = f"{dev / room:.0%} of the way to collapse ({_fmt(rule.collapsed)})" if room > 0 else "toward collapse"
        times = f"{dev / noise:.1f}x" if noise > 0 else "far beyond"
        msg = (
            f"{s.metric} {verb} from its settled level {_fmt(ref)} (step {ev.get('ref_step')}) to {_fmt(value)} at "
            f"step {s.step} (tap '{s.tap}'): {lost}, {times} the run's noise ({_fmt(noise)}). {what}. Check {check}."
        )
    return Judgement(breach, rearm, msg)


@register("collapse")
def _judge_collapse(rule: Any, st: Any, s: Sample) -> Judgement:
    ev, se = st.ev, s.stderr
    n = int(ev.get("n", 0)) + 1
    ev["n"] = n
    waiting = s.step < ev.get("sample_at", -1)  # a finer cadence's sample before the one asked for
    dist = abs(s.value - rule.collapsed)
    far = max(float(ev.get("far", 0.0)), dist)
    ev["far"] = far
    margin = rule.margin * far if rule.relative else rule.margin
    prev = ev.get("prev")  # [distance, se] of the previous sample
    ev["prev"] = [dist, se]
    in_zone = dist <= margin
    rearm = dist > margin * (1.0 + rule.hysteresis)
    if not in_zone or prev is None:
        return Judgement(False, rearm, None)
    prev_dist, prev_se = float(prev[0]), float(prev[1])
    fell_in = prev_dist > margin
    if fell_in and n == 2 and rule.confirm_steps:  # entered at the first trained sample: confirm it first
        ev["sample_at"] = s.step + rule.confirm_steps
        return Judgement(False, False, None)
    if waiting:
        return Judgement(False, False, None)
    recovering = (dist - prev_dist) > max(rule.z * math.sqrt(se * se + prev_se * prev_se), 0.02 * margin)
    breach = fell_in or not recovering
    msg = None
    if breach:
        what, check = hint(s.metric)
        how = "fell into" if fell_in else "stays in"
        msg = (
            f"{s.metric} {how} the collapse zone at step {s.step} (tap '{s.tap}'): {_fmt(s.value)}, within "
            f"{_fmt(margin)} of the collapsed value {_fmt(rule.collapsed)} and not recovering. {what}. Check {check}."
        )
    return Judgement(breach, rearm, msg)


# ------------------------------------------------------------ rules in a scale no method sets: distance to collapse
def _distance(rule: Any, value: float) -> float:
    """Distance of ``value`` to the rule's collapsed value: ``|value - collapsed|`` or ``ln(value / collapsed)``."""
    if rule.scale == "log":
        return math.log(value / rule.collapsed) if value > rule.collapsed else 0.0
    return abs(value - rule.collapsed)


def _distance_se(rule: Any, value: float, se: float) -> float:
    """The standard error of :func:`_distance` (delta method on the log scale)."""
    if rule.scale == "log":
        return se / value if value > 0 else 0.0
    return se


def _hypot(a: float, b: float) -> float:
    return math.sqrt(a * a + b * b)


def _closer(rule: Any, a: float, b: float) -> float:
    """How many times closer to collapse distance ``b`` is than distance ``a`` (log scale: the ratio of the values)."""
    return math.exp(min(a - b, 700.0)) if rule.scale == "log" else a / max(b, 1e-12)


@register("approach")
def _judge_approach(rule: Any, st: Any, s: Sample) -> Judgement:
    ev, value, step = st.ev, s.value, s.step
    d, dse = _distance(rule, value), _distance_se(rule, value, s.stderr)
    hist = [h for h in ev.get("hist", []) if h[3] >= step - 2 * rule.steady_span][-200:]  # recent [d, se, value, step]
    if not hist and ev.get("hist"):
        hist = ev["hist"][-1:]  # the previous sample, however long ago (a sudden fall compares with it)
    hist.append([d, dse, value, step])
    ev["hist"] = hist
    n = int(ev.get("n", 0)) + 1
    ev["n"] = n
    far = ev.get("far")  # [distance, se, value, step] of the farthest sample from collapse that can be a reference
    tiny = 1e-12

    closer = functools.partial(_closer, rule)
    breach, how, start, times = False, "", far, 0.0
    if far is not None:
        times = closer(far[0], d)
        breach = times >= rule.factor and far[0] - d > rule.z * _hypot(dse, far[1])
    if not breach and rule.jump and n > rule.skip_first + 1 and len(hist) >= 2:  # a sudden fall in one evaluation
        prev = hist[-2]
        if closer(prev[0], d) >= rule.jump and prev[0] - d > rule.z * _hypot(dse, prev[1]):
            breach, start, times, how = True, prev, closer(prev[0], d), " in one evaluation"
    if not breach and rule.steady:
        # the window: from the latest sample at least 0.9 x steady_span steps back (the run's first sample counts)
        begin = max((k for k, h in enumerate(hist) if h[3] <= step - 0.9 * rule.steady_span), default=None)
        win = hist[begin:] if begin is not None else []
        if len(win) > rule.steady:
            mid = min(range(len(win)), key=lambda k: abs(win[k][3] - 0.5 * (win[0][3] + step)))
            first_half = math.log(max(closer(win[0][0], win[mid][0]), tiny))
            second_half = math.log(max(closer(win[mid][0], d), tiny))
            steady = (0 < mid < len(win) - 1 and all(b[0] < a[0] for a, b in zip(win, win[1:]))  # every move
                      and win[0][0] - win[mid][0] > rule.z * _hypot(win[0][1], win[mid][1])  # each half beyond
                      and win[mid][0] - d > rule.z * _hypot(win[mid][1], dse)  # the noise (a step after a level
                      and second_half >= 0.5 * first_half)  # is not steady), and not slowing down
            if steady and closer(win[0][0], d) >= rule.steady_factor:
                breach, start, times = True, win[0], closer(win[0][0], d)
                how = f" steadily over {len(win) - 1} evaluations"
    confirm = ev.get("confirm")  # [d, se, value, step] of a second sample that came factor x closer
    if confirm is not None and step >= ev["sample_at"]:  # the sample asked for (a finer cadence's earlier ones
        ev.pop("confirm")                                 # do not count)
    else:
        confirm = None
    if confirm is not None and not breach:  # closer still is an approach from step 0
        times_more = closer(confirm[0], d)
        if times_more >= rule.confirm_factor and confirm[0] - d > rule.z * _hypot(dse, confirm[1]):
            first = hist[0] if hist[0][3] < confirm[3] else confirm
            breach, start, times = True, first, closer(first[0], d)
            how = f" and on from step {confirm[3]} ({times_more:.2f}x closer again)"
    if (rule.confirm_first and n == 2 and rule.skip_first >= 1 and len(hist) >= 2 and not breach
            and closer(hist[-2][0], d) >= rule.factor and hist[-2][0] - d > rule.z * _hypot(dse, hist[-2][1])):
        ev["confirm"] = [d, dse, value, step]  # came factor x closer than the random start: ask for a sample
        ev["sample_at"] = step + rule.confirm_first
    if breach and rule.unless_recovering and len(hist) >= 2 and \
            d - hist[-2][0] > rule.z * _hypot(dse, hist[-2][1]):  # moving away from collapse: not (yet) critical
        breach = False
    rearm = not breach and (far is None or closer(far[0], d) * (1.0 + rule.hysteresis) <= rule.factor)
    if n > rule.skip_first and (far is None or d > far[0]):
        ev["far"] = [d, dse, value, step]
    msg = None
    if breach:
        what, check = hint(s.metric)
        verb = "rose" if value > start[2] else "fell"
        scale = "its value" if rule.scale == "log" else "its distance to the collapsed value " + _fmt(rule.collapsed)
        amount = f"{times:.1f}x" if times < 1e6 else "all the way"
        moved = "fell" if rule.scale == "log" else "shrank"
        msg = (f"{s.metric} {verb} from {_fmt(start[2])} (step {start[3]}) to {_fmt(value)} at step {step}{how} "
               f"(tap '{s.tap}'): {scale} {moved} {amount}. {what}. Check {check}.")
    return Judgement(breach, rearm, msg)


def _steps_window(window: list, sample: list, span: int) -> list:
    """``window`` (``[x, step]`` samples, oldest first) with ``sample`` appended, trimmed to the samples of the last
    ``span`` steps and the latest one before them (so that it spans ``span`` steps at any cadence once it can);
    bounded to 500 samples."""
    window = window + [sample]
    step = sample[1]
    while len(window) > 1 and (window[1][1] <= step - span or len(window) > 500):
        window.pop(0)
    return window


@register("level")
def _judge_level(rule: Any, st: Any, s: Sample) -> Judgement:
    ev, value, step = st.ev, s.value, s.step
    rise = rule.direction == "rise"
    ref = ev.get("ref")  # [level, first step, last step] of the best level held so far
    ratio = 0.0
    if ref is not None and value > 0:
        ratio = value / ref[0] if rise else ref[0] / value
    elif ref is not None and not rise:
        ratio = math.inf  # fell to zero or below from a positive level
    breach = ratio >= rule.factor
    if rule.hold_steps:  # held on every sample of the last hold_steps steps and the latest one before them
        held = ev["held"] = _steps_window(ev.get("held", []), [ratio, step], rule.hold_steps)
        breach = breach and held[0][1] <= step - rule.hold_steps and all(h[0] >= rule.factor for h in held)
    rearm = ratio * (1.0 + rule.hysteresis) <= rule.factor
    # does the window of the last `span` steps hold a level?
    hist = ev["hist"] = _steps_window(ev.get("hist", []), [value, step], rule.span)
    if len(hist) >= rule.min_samples and hist[0][1] <= step - rule.span:
        half = len(hist) // 2
        first = statistics.median(h[0] for h in hist[:half])
        second = statistics.median(h[0] for h in hist[-half:])
        level = statistics.median(h[0] for h in hist)
        if first > 0 and second > 0 and max(first, second) <= rule.flat * min(first, second) and level > 0 and (
                ref is None or (level < ref[0] if rise else level > ref[0])):
            ev["ref"] = [level, hist[0][1], hist[-1][1]]
    msg = None
    if breach:
        what, check = hint(s.metric)
        verb = "rose" if rise else "fell"
        times = f"{ratio:.1f}x" if math.isfinite(ratio) else "all the way"
        msg = (f"{s.metric} {verb} {times} from the level {_fmt(ref[0])} it held over steps {ref[1]}-{ref[2]} to "
               f"{_fmt(value)} at step {step} (tap '{s.tap}'). {what}. Check {check}.")
    return Judgement(breach, rearm, msg)


@register("regime", event="regime_change")
def _judge_regime(rule: Any, st: Any, s: Sample) -> Judgement:
    ev, value = st.ev, s.value
    d, dse = _distance(rule, value), _distance_se(rule, value, s.stderr)
    n = int(ev.get("n", 0)) + 1
    ev["n"] = n
    recent = list(ev.get("recent", []))  # the last two samples that set the level [distance, se, value, step]
    run = list(ev.get("run", []))  # samples since the level changed (a new regime being confirmed)
    breach = False
    if n > rule.settle and len(recent) == 2:
        level = 0.5 * (recent[0][0] + recent[1][0])
        level_se = 0.5 * _hypot(recent[0][1], recent[1][1])
        ratio = _closer(rule, level, d)
        # a level: the two samples before agree (within the square root of the factor); the change goes toward
        # collapse (a recovery, or a move away from collapse, is nothing to report) and is beyond the noise
        stable = max(_closer(rule, recent[0][0], recent[1][0]),
                     _closer(rule, recent[1][0], recent[0][0])) < rule.factor ** 0.5
        breach = stable and ratio >= rule.factor and level - d > rule.z * _hypot(dse, level_se)
    msg = None
    if breach:
        run.append([d, dse, value, s.step])
        first = run[0]
        before = 0.5 * (recent[0][2] + recent[1][2])
        msg = (f"the geometry changed at step {first[3]} (tap '{s.tap}'): {s.metric} moved from its level "
               f"{_fmt(before)} (steps {recent[0][3]}-{recent[1][3]}) to {_fmt(value)} at step {s.step}, "
               f"{ratio:.1f}x closer to the collapsed value {_fmt(rule.collapsed)}, and held there. A change "
               "of recipe (augmentations, loss weights, a new head, the data) does this; it is not a collapse "
               "unless a collapse alert says so.")
        if len(run) >= rule.patience:  # reported now: the new level is the level from here on
            recent, run = run[-2:] if len(run) >= 2 else [recent[1], run[-1]], []
    else:
        run = []
        recent = (recent + [[d, dse, value, s.step]])[-2:]
    ev["recent"], ev["run"] = recent, run
    return Judgement(breach, not breach, msg)
