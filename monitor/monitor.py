"""The :class:`Monitor`: a thin facade over the engine's parts, with data flowing one way::

    capture (sampler.py) -> buffer (buffer.py) -> evaluate (evaluation.py, compute.py)
        -> alerts (alerting.py) and records -> writer (delivery/) -> sinks (sinks/)

The schedule (schedule.py) decides from the step alone when rows are taken and evaluated; every failure goes
through one fault reporter (faults.py).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from spherewatch import distributed as dist_utils
from spherewatch.alerting import AlertPipeline
from spherewatch.alerts.alert import Alert
from spherewatch.alerts.engine import check_change, default_settle
from spherewatch.capture import Selector
from spherewatch.config import MonitorConfig, load_config
from spherewatch.delivery.writer import RecordWriter, split_sink_args
from spherewatch.evaluation import Evaluator, readback
from spherewatch.faults import FaultReporter
from spherewatch.heads import DEFAULT_HEAD_TAP, HeadTaps, Temperature, select_logits
from spherewatch.redact import install_log_redaction
from spherewatch.sampler import Sampler, _is_compiling, check_tap, validate_rows
from spherewatch.schedule import StepClock
from spherewatch.sinks.mlflow import REPORT_ARTIFACT_DIR

__all__ = ["Monitor"]

#: A run key names the run's spool folder under the spool root: a plain name, never a path.
_RUN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def _check_writer_state(state: Any) -> None:
    """The writer part of a checkpoint: a mapping whose ``run_key`` (if any) is a name, not a path."""
    if not isinstance(state, Mapping):
        raise ValueError(f"Monitor state: `writer` must be a dict, got {type(state).__name__}.")
    key = state.get("run_key")
    if key is not None and (not isinstance(key, str) or not _RUN_KEY.fullmatch(key) or ".." in key):
        raise ValueError(f"Monitor state: the writer's `run_key` must be a plain name (letters, digits, '_', '.', "
                         f"'-'), got {key!r}: a checkpoint names a run, never a folder elsewhere.")

logger = logging.getLogger("spherewatch")
#: A marked recipe change riding along with the taps' names to the other ranks: ``"\0mark\0<step>\0<settle>\0<what>"``.
_MARK = "\0mark\0"

_STATE_VERSION = 1
class Monitor:
    """Watches embedding geometry during training and alerts when it collapses.

    Three calls in a training loop::

        mon = sw.Monitor(every_n_steps=50, sinks=("tensorboard",))
        ...
        mon.observe(z1, z2)          # after the forward pass (or: mon.watch(model.encoder) once)
        mon.step(global_step)        # after the optimizer step; returns the alerts fired now

    An assignment head (DINO, iBOT, SwAV, MSN) is watched beside the embeddings with
    ``mon.observe_head(teacher_logits, student_logits, teacher_temp=..., student_temp=...)`` (or
    ``mon.watch(head, kind="head")``): see :mod:`spherewatch.heads`.

    Args:
        config: a :class:`MonitorConfig`, a dict, or a path to a .yaml/.toml/.json file; ``None`` for defaults.
        sinks: sink names (``"tensorboard"``, ``"mlflow"``, ``"jsonl"``, ``"memory"``: the ``sinks`` config field)
            and/or sink objects, e.g. a :class:`~spherewatch.sinks.TensorBoardSink` around the host's own
            ``SummaryWriter``. Default: the configured sinks, else JSONL (``<log_dir>/spherewatch.jsonl``); when only
            objects are given, only they are written to.
        on_alert: a callable (or several) called with every fired :class:`~spherewatch.Alert`.
        **overrides: config fields, e.g. ``every_n_steps=10, sinks=("jsonl",), log_dir="runs/exp1"``.

    Off evaluation steps, :meth:`observe` and armed hooks cost a flag check. On the (few) capture steps rows are
    copied into a bounded on-device buffer; on evaluation steps the metrics run on the device and their values
    come back to the host once. Nothing here takes the training run down: a failure is reported once per part and
    kind (a ``MonitorFault`` to the alert channels, see :mod:`spherewatch.faults`) and that part is skipped or
    retried; ``strict=True`` raises a :class:`SpherewatchError`.
    """

    def __init__(
        self,
        config: Union[None, MonitorConfig, Mapping[str, Any], str, os.PathLike] = None,
        *,
        sinks: Optional[Sequence[Any]] = None,
        on_alert: Union[None, Callable[[Alert], Any], Sequence[Callable[[Alert], Any]]] = None,
        **overrides: Any,
    ) -> None:
        objects = split_sink_args(sinks, overrides)
        self.config: MonitorConfig = load_config(config, **overrides)
        callbacks = [] if on_alert is None else ([on_alert] if callable(on_alert) else list(on_alert))
        self._stepping: Optional[int] = None  # the step being evaluated (faults raised there carry it)
        self._faults = FaultReporter(self.config, lambda alerts: self._alerting.dispatch(alerts), self._fault_step)
        self._alerting = AlertPipeline(self.config, callbacks, self._faults)
        self._clock = StepClock(self.config)
        self._sampler = Sampler(self.config, self._faults)
        self._sampler.armed = self._clock.armed
        self._heads = HeadTaps(self.config, self._faults, lambda: self._sampler.armed,  # assignment heads (issue 18)
                               self._sampler.first_this_step)
        self._evaluator = Evaluator(self.config, self._faults)
        install_log_redaction()
        # validates the sinks now (missing extra, bad tracking URI scheme); opens them on its thread, rank zero only
        self._writer = RecordWriter(self.config, objects, self._faults)
        self._should_stop = False
        self._marks: List[str] = []  # under torch.distributed: recipe changes marked here, not yet agreed
        self._closed = False
        self._step_calls = 0  # compared across ranks at the first evaluation (a step counter off by one shows here)
        #: at close, attach the ``spherewatch report`` of the run to the sinks this monitor opened itself that take
        #: artifacts (MLflow: ``spherewatch/report/``); False leaves it out (e.g. to attach a report of one's own)
        self.attach_report = True
        self._handles: List[Any] = []
        self._warned_empty = False
        #: values of the latest evaluation, keyed ``<prefix>/<tap>/<metric>``
        self.last_values: Dict[str, float] = {}
        #: step of the latest evaluation (decided from the step alone: the same on every rank)
        self.last_evaluation_step: Optional[int] = None

    def _fault_step(self) -> Optional[int]:
        """The step a failure belongs to: the one being evaluated, else the one being trained (never -1)."""
        if self._stepping is not None:
            return self._stepping
        if self._clock.last_step is not None:
            return self._clock.last_step + 1
        return self.config.start_step

    # ------------------------------------------------------------------ the parts' public faces
    @property
    def faults(self) -> Dict[str, int]:
        """Failures counted per part (e.g. ``"sink:mlflow"``, ``"capture:encoder"``)."""
        return self._faults.counts

    @property
    def captures(self) -> Dict[str, int]:
        """Batches taken per tap (embedding taps and head taps)."""
        return {**self._sampler.captures, **self._heads.captures}

    @property
    def alerts(self) -> List[Alert]:
        """The latest alert events (fired, reminders, resolved), oldest first; bounded (the last
        :data:`~spherewatch.alerting.HISTORY_LIMIT`), the sinks keep every one."""
        return list(self._alerting.history)

    @property
    def sinks(self) -> List[Any]:
        """The sinks this monitor writes to (the inner sink of each resilient wrapper), once every record submitted
        so far was handed to them (waits at most ``close_timeout``)."""
        return self._writer.sinks

    def sink(self, name: str) -> Any:
        """The first sink whose ``name`` is ``name`` (e.g. ``"memory"``), once the records so far were written."""
        return self._writer.sink(name)

    def report_fault(self, part: str, exc: BaseException, consequence: str = "skipped") -> None:
        """Report a failure of ``part`` the way the Monitor reports its own (for adapters): once per part, to the
        log and the alert channels (a ``MonitorFault``); raises :class:`SpherewatchError` under ``strict``."""
        self._faults.report(part, exc, consequence)

    # ------------------------------------------------------------------ capture
    @property
    def armed(self) -> bool:
        """True while the coming forward passes are captured (a capture step)."""
        return self._sampler.armed

    def observe(self, z: Optional[torch.Tensor] = None, z_pos: Optional[torch.Tensor] = None, *,
                tap: Optional[str] = None, labels: Optional[torch.Tensor] = None, pool: Optional[str] = None,
                views: Optional[torch.Tensor] = None) -> None:
        """Hand over a batch of embeddings ``(N, D)`` (and optionally its paired view and labels).

        Cheap to call on every step: it returns at once unless this is a capture step. At most one batch per tap
        is taken per step (gradient accumulation and re-computation do not double count) unless
        ``every_micro_batch`` is set: then every batch of the step is taken, up to ``max_samples`` rows.
        ``(B, T, H)`` tensors need ``pool=`` ('mean', 'first' or 'last').

        ``views=`` takes the augmented views of each sample as one ``(B, V, D)`` tensor, ``V >= 2``, instead of
        ``z, z_pos`` (pass ``z=None``): every view is buffered (``V`` x the memory of one); ``lidar`` uses all ``V``
        views of a row as its surrogate class, the pair metrics (``alignment``, ``uniformity_pos``) views 0 and 1.
        """
        self._sampler.observe(z, z_pos, tap=tap, labels=labels, pool=pool, views=views)

    def observe_head(self, teacher: torch.Tensor, student: Optional[torch.Tensor] = None, *,
                     teacher_temp: Temperature = 1.0, student_temp: Temperature = 1.0, tap: str = DEFAULT_HEAD_TAP,
                     center: Optional[torch.Tensor] = None, probs: bool = False) -> None:
        """Hand over an assignment head's output (DINO, iBOT, SwAV, MSN): the teacher's ``(B, K)`` logits (and the
        student's, for ``teacher_student_kl``) with the temperatures the loss uses; logged under ``tap`` (default
        ``head``: ``spherewatch/head/usage_entropy``, ...). See :mod:`spherewatch.metrics.head`.

        A call of its own rather than more arguments of :meth:`observe`: the head's rows are assignments over
        ``K`` prototypes, not embeddings (no geometry metric applies to them, and none of the head metrics to
        embeddings), and they are kept as ``O(K)`` sums, never buffered. The same schedule as :meth:`observe`
        (one batch per tap per capture step unless ``every_micro_batch``; a flag check on other steps).

        Args:
            teacher: ``(B, K)`` teacher logits (``probs=False``) or probabilities / codes (``probs=True``: SwAV's
                Sinkhorn codes, an MSN or iBOT target).
            student: ``(B, K)`` student logits (or probabilities) of the same samples, or None.
            teacher_temp, student_temp: the temperatures (a number or a callable giving the current one, e.g.
                DINO's teacher warm-up 0.04 -> 0.07); not used with ``probs=True``.
            center: DINO's centre ``(K,)``, subtracted from the teacher's logits before the temperature.
        """
        if _is_compiling():  # inside torch.compile: kept (a dict store dynamo can trace), taken at the next step
            self._sampler.defer(f"observe_head:{tap}", lambda args, kw: self.observe_head(*args, **kw),
                                (teacher, student),
                                dict(teacher_temp=teacher_temp, student_temp=student_temp, tap=tap, center=center,
                                     probs=probs))
            return
        if self._heads.closed or not self._sampler.armed:
            return
        self._heads.add(check_tap(tap), teacher, student, teacher_temp=teacher_temp, student_temp=student_temp,
                        probs=probs, center=center)

    def watch(self, module: torch.nn.Module, tap: Optional[str] = None, *, select: Selector = None,
              pool: Optional[str] = None, when: Optional[Callable[[], bool]] = None, kind: str = "embeddings",
              temperature: Temperature = 1.0, probs: bool = False):
        """Capture the output of ``module`` with a forward hook, installed once and armed only on capture steps.

        Args:
            module: any ``nn.Module`` (install before ``torch.compile``: hooks added afterwards never fire). Safe
                inside ``torch.compile(fullgraph=True)``: there the hook keeps the output and the rows are taken at
                the next :meth:`step` (no graph break, no recompile; see
                :func:`spherewatch.sampler.deferred_output_hook`).
            tap: name used in the log keys (default ``config.default_tap``).
            select: which part of a tuple / dict / HF ``ModelOutput`` output holds the embeddings: a key, an index
                or a callable (default: the tensor itself, element 0 of a tuple, or the first of
                ``embeddings, pooler_output, last_hidden_state, ...`` in a dict).
            pool: pooling of ``(B, T, H)`` outputs (default ``config.pool``: mean over tokens, honouring an
                ``attention_mask`` keyword argument of the module when there is one).
            when: take a call only while ``when()`` is true (e.g. ``lambda: module.training``, so evaluation passes
                between optimizer steps are never taken for training batches).
            kind: ``"embeddings"`` (default) or ``"head"``: the module is an assignment head (DINO's teacher head,
                SwAV's prototypes) whose output holds ``(B, K)`` logits; they are taken as by :meth:`observe_head`
                (teacher only, at ``temperature``: a number or a callable for a warm-up schedule; ``probs=True``
                when the output is already probabilities). Default tap ``head``.

        Returns:
            a handle with ``.remove()``.
        """
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"Expected an nn.Module to watch, got {type(module).__name__}.")
        if kind == "head":
            head_tap = check_tap(tap or DEFAULT_HEAD_TAP)

            def take(output: Any, kwargs: Mapping[str, Any]) -> None:
                try:
                    logits = select_logits(output, select)
                except Exception as exc:
                    self._faults.report(f"capture:{head_tap}", exc, "this batch was not recorded")
                    return
                self._heads.add(head_tap, logits, None, teacher_temp=temperature, probs=probs)

            fire = (lambda: self._sampler.armed) if when is None else (lambda: self._sampler.armed and when())
            handle = module.register_forward_hook(self._sampler.output_hook(fire, take, training_only=when is not None),
                                                  with_kwargs=True)
            self._handles.append(handle)
            return handle
        if kind != "embeddings":
            raise ValueError(f"Expected kind='embeddings' or 'head', got {kind!r}.")
        hook = self._sampler.hook(check_tap(tap or self.config.default_tap), select, pool or self.config.pool, when)
        handle = module.register_forward_hook(hook, with_kwargs=True)
        self._handles.append(handle)
        return handle

    def output_hook(self, fire: Callable[[], bool], take: Callable[[Any, Mapping[str, Any]], None], *,
                    training_only: bool = False) -> Callable[..., None]:
        """A forward hook calling ``take(output, kwargs)`` when ``fire()`` is true, safe under ``torch.compile``
        (``fullgraph=True`` included): inside a compiled region the output is kept and ``take`` runs eagerly at the
        next :meth:`step`. For adapters; register it with ``module.register_forward_hook(hook, with_kwargs=True)``."""
        return self._sampler.output_hook(fire, take, training_only=training_only)

    def take_pending_outputs(self) -> None:
        """Take, eagerly, the outputs that watched modules produced inside a ``torch.compile``'d region since the
        last step (``step()`` does this first; adapters that evaluate without ``step()`` may call it)."""
        self._sampler.take_pending()

    # ------------------------------------------------------------------ stepping
    def step(self, global_step: Optional[int] = None) -> List[Alert]:
        """Advance to ``global_step`` (call once per optimizer step, after it). Evaluates when due.

        Returns the alerts fired at this step (usually empty): new alerts and reminders of open ones, never
        "resolved" events (those go to the sinks, the log and :attr:`alerts`).
        """
        if self._closed:
            return []
        self._step_calls += 1
        self._sampler.take_pending()
        s, due = self._clock.begin(global_step)
        fired: List[Alert] = []
        if due:
            self._stepping = s
            self._writer.hold(True)  # the writer thread waits between writes: no GIL contention with the evaluation
            try:
                fired, _ = self._evaluate(s, self._sampler.take_all(), spectral=self._clock.spectral_due(s))
            finally:
                self._stepping = None
                self._writer.hold(False)
            self.last_evaluation_step = s
        # a rule may ask for an evaluation before the schedule's next (a collapse zone entered at the first trained
        # evaluation is confirmed 10 steps later): every rank's engine holds the same state, so all ranks ask alike
        extra = self._alerting.requested_step(s) if due else None
        if self._clock.end(s, due, extra):
            # rows captured at a step outside the coming evaluation's window (e.g. a first step that was not an
            # evaluation step after all) must not leak into it
            self._sampler.clear()
            self._heads.clear()
        self._sampler.next_step()
        self._sampler.armed = self._clock.armed
        self._faults.raise_deferred()
        self._alerting.raise_escalated()  # a CollapseWarning escalated by a warnings filter: raised here, in user code
        return fired

    def _evaluate(self, s: int, rows: Mapping[str, Any], *, spectral: bool, scheduled: bool = True):
        """Evaluate ``rows`` at step ``s``, run the rules, write the records; every rank calls it at the same
        step. Under strict + DDP a failure is raised only after the last collective (by ``step``)."""
        if not self._evaluator.agree(self._fingerprint(s, scheduled)):  # DDP: ranks that disagree stay off
            return [], {}
        defer = self.config.strict and dist_utils.is_distributed()
        with self._faults.deferring() if defer else contextlib.nullcontext():
            extra = [*self._heads.descriptors(), *self._marks] if scheduled else ()
            values, hists = self._evaluator.evaluate(rows, spectral=spectral, seed=self.config.seed + self._clock.evaluations,
                                                     extra_names=extra)
            if scheduled:  # the marks and the assignment heads' sums (every rank, every scheduled evaluation)
                self._apply_marks(self._evaluator.extra_union)
                values = {**values, **self._head_values(self._evaluator.extra_union)}
                self._clock.evaluated(s, spectral)
            fired: List[Alert] = []
            if values:
                events = self._alerting.update(s, values)  # fired, reminders and resolved: all go to the sinks
                fired = [a for a in events if a.status == "fired"]
                if scheduled:
                    self.last_values = values
                self._writer.submit(s, values, hists, events)
            elif (not self._evaluator.had_rows and scheduled and not self._warned_empty
                  # a batch handed over and rejected: its capture fault said why (the user does call observe())
                  and not any(part.startswith("capture:") for part in self._faults.counts)):
                self._warned_empty = True
                logger.warning(
                    "spherewatch: no usable embeddings reached the monitor for the evaluation at step %d. Call "
                    "`monitor.observe(z)` after the forward pass on every step (or `monitor.watch(module)` before "
                    "training); batches that were empty or rejected are not counted.", s,
                )
            stop = self._evaluator.any_stop(any(a.action == "stop" for a in fired) or self._should_stop)
            self._should_stop = self._should_stop or stop
        return fired, values

    def _apply_marks(self, union: Optional[List[str]]) -> None:
        """Under ``torch.distributed``: the recipe changes marked on any rank since the last scheduled evaluation
        (they rode along with the taps' names, ``union``), applied in step order on every rank alike. ``None``: that
        collective failed; they wait for the next evaluation."""
        if union is None:
            return
        self._marks = []
        marks = []
        for name in union:
            if name.startswith(_MARK):
                step, settle, what = name[len(_MARK):].split("\0", 2)
                marks.append((int(step), int(settle), what))
        for step, settle, what in sorted(marks):
            self._alerting.mark_change(step, what, settle)

    def _head_values(self, union: Optional[List[str]]) -> Dict[str, float]:
        """The head taps' metrics of this window as floats (one readback); ``{}`` without head taps. ``union``: every
        rank's head descriptors, gathered by the evaluator."""
        try:
            tensors = self._heads.evaluate(self.config.keys, union)
            return readback(tensors, {})[0] if tensors else {}
        except Exception as exc:
            self._faults.report("metrics:head", exc, "the head metrics were skipped at this step")
            return {}

    def _fingerprint(self, s: int, scheduled: bool) -> Dict[str, Any]:
        """What every rank's Monitor must agree on at its first evaluation (see ``distributed.handshake``)."""
        cfg = self.config
        fields = ("every_n_steps", "start_step", "sample_first_step", "log_spaced", "spectral_every_n_steps",
                  "window_steps", "max_samples")
        return {"step": s, "step_calls": self._step_calls, "scheduled": scheduled,
                "metrics": list(cfg.metric_names), **{f: getattr(cfg, f) for f in fields}}

    def evaluate_now(self, z: Optional[torch.Tensor], z_pos: Optional[torch.Tensor] = None, *, tap: str,
                     labels: Optional[torch.Tensor] = None, step: Optional[int] = None) -> Dict[str, float]:
        """Evaluate these rows at once (e.g. a whole validation epoch), outside the schedule, under ``tap``; the
        values go through the same rules and sinks. Under ``torch.distributed`` every rank must call it (``z=None``
        on a rank without rows); the rows are gathered across ranks. Returns the values (``<prefix>/<tap>/...``).

        Raises:
            SpherewatchError: only under ``strict``, on a failure.
        """
        if self._closed:
            return {}
        s = int(step) if step is not None else (self._clock.last_step or 0)
        rows: Dict[str, Any] = {}
        if z is not None:
            try:
                rows[tap] = validate_rows(tap, z, z_pos, labels, self.config.pool)
                self._sampler.captures[tap] += 1
            except Exception as exc:
                self._faults.report(f"capture:{tap}", exc, "this batch was not recorded")
        self._stepping = s
        try:
            _, values = self._evaluate(s, rows, spectral=True, scheduled=False)
        finally:
            self._stepping = None
        self._faults.raise_deferred()
        self._alerting.raise_escalated()
        return dict(values)

    # ------------------------------------------------------------------ the host's own values
    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Log the host's own scalars (e.g. ``{"train/loss": 0.41}``) through the monitor's sinks, beside its
        metrics: a loss that keeps improving while the geometry collapses is what the dashboards should show.
        Keys are written as given (a key like ``train/loss`` joins the "Collapse overview"); rank zero only."""
        if self._closed or not values:
            return
        self._writer.submit(int(step), {str(k): float(v) for k, v in values.items()}, {}, [])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log run parameters (hyperparameters) to every sink that keeps them (MLflow params, a TensorBoard text,
        a JSONL ``params`` record). Existing MLflow params are never overwritten. Rank zero only."""
        if self._closed:
            return
        self._writer.submit_params(dict(params))

    def mark_change(self, what: str = "", *, step: Optional[int] = None, settle_steps: Optional[int] = None) -> None:
        """Say that you changed the recipe (augmentations, loss weights, data, a new head) from ``step`` on (default:
        the next step, the first one trained after this call); call it on every rank, like the change itself.

        A deliberate change can move the geometry at once: SimCLR with augmentations twice as strong on digits sees
        its batch's mean cosine go 0.06 -> 0.91 within 50 steps while a probe on clean inputs does not move; no rule
        can tell that from a collapse by the numbers alone. So for ``settle_steps`` steps (default: two evaluation
        intervals) no new alert starts (an open one is still judged; NaN/Inf still report); then ONE ``info`` event
        per tap (``kind="regime_change"``, rule ``marked_change``) says what each watched metric was before the
        change and is now, and the rules start over from that level as at the start of a run: a collapse from there
        is alerted as usual. Nothing is asked of the data; it is only the alert rules' business.

        Example:
            >>> import spherewatch as sw
            >>> mon = sw.Monitor(sinks=[], every_n_steps=50)
            >>> mon.mark_change("augmentations x2", step=300)
            >>> mon.close()
        """
        try:
            if step is None:
                last = self._clock.last_step
                step = 0 if last is None else last + 1
            if settle_steps is None:
                settle_steps = default_settle(self.config.every_n_steps)
            step, settle_steps, what = check_change(step, settle_steps, what)
        except ValueError as exc:  # a bad argument: reported (raised under strict), the run goes on
            self._faults.report("mark_change", exc, "the change was not marked")
            return
        if dist_utils.is_distributed():  # agreed at the next evaluation: every rank's rules must stay the same
            self._marks.append(f"{_MARK}{step}\0{settle_steps}\0{what}")
        else:
            self._alerting.mark_change(step, what, settle_steps)
        logger.info("spherewatch: recipe change marked at step %d%s: no new alert before step %d, then the rules "
                    "watch from the new level", step, f" ({what})" if what else "", step + settle_steps)

    # ------------------------------------------------------------------ state
    @property
    def should_stop(self) -> bool:
        """True once a rule whose action is ``"stop"`` has fired (the same on every rank)."""
        return self._should_stop

    @property
    def global_step(self) -> Optional[int]:
        return self._clock.last_step

    def state_dict(self) -> Dict[str, Any]:
        """Alert state, baselines and schedule position (JSON-serialisable). Buffers are not saved: a resumed run
        captures afresh at its next window."""
        return {"version": _STATE_VERSION, **self._clock.state_dict(), "should_stop": self._should_stop,
                **self._alerting.state_dict(), "last_values": dict(self.last_values),
                "writer": self._writer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"Expected a dict from Monitor.state_dict(), got {type(state).__name__}.")
        _check_writer_state(state.get("writer", {}))
        if not isinstance(state.get("should_stop", False), bool):
            raise ValueError(f"Monitor state: `should_stop` must be a bool, got {state.get('should_stop')!r}.")
        self._clock.load_state_dict(state)
        self._sampler.armed = self._clock.armed
        self._should_stop = bool(state.get("should_stop", False))
        self._alerting.load_state_dict(state)
        keys = self.config.keys  # a run saved under the other key scheme continues under this one
        self.last_values = {keys.canonical(k): v for k, v in dict(state.get("last_values", {})).items()}
        self._writer.load_state_dict(state.get("writer", {}))  # the same run: its spool folder and MLflow run
        self._sampler.clear()
        self._heads.clear()

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every evaluation so far was handed to the sinks and they flushed (at most ``timeout`` seconds,
        default ``close_timeout``). Sinks are written by a background thread: call this (or :meth:`close`) before
        reading what they hold. Returns True when done in time."""
        return self._writer.flush(timeout)

    def close(self, timeout: Optional[float] = None) -> None:
        """Remove hooks; let the writer hand what is queued to the sinks and close them, for at most ``timeout``
        seconds (default ``close_timeout``: the rest stays in the spool folder, named in a log line); close the alert
        channels (queued webhook alerts are sent). Idempotent, and safe to call from a signal handler."""
        if self._closed:
            return
        self._closed = self._sampler.closed = self._heads.closed = True
        for h in self._handles:
            try:
                h.remove()
            except Exception:  # pragma: no cover
                pass
        self._writer.close(timeout, finish=attach_report if self.attach_report else None)
        try:
            self._alerting.close()
        except Exception as exc:  # pragma: no cover
            self._faults.report("alert channels", exc)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "A spherewatch Monitor cannot be pickled or deep-copied: it owns a writer thread, open sinks and forward "
            "hooks. Carry `monitor.state_dict()` instead and rebuild it with `Monitor(config)` + `load_state_dict()`; "
            "to copy a watched model (e.g. an EMA teacher), copy it before `monitor.watch()` or after `handle.remove()`.")

    def __repr__(self) -> str:
        cfg = self.config
        return (f"Monitor(every_n_steps={cfg.every_n_steps}, metrics={list(cfg.metric_names)}, "
                f"taps={self._sampler.taps()}, step={self._clock.last_step})")


def attach_report(sink: Any) -> None:
    """Hand ``sink`` the ``spherewatch report`` of the run it writes to (``report.html`` and its PNGs, under
    ``spherewatch/report/``). Called by the writer, on its thread, just before it closes a sink the Monitor opened
    itself that takes artifacts. Best effort: nothing without matplotlib, a warning when it fails."""
    if importlib.util.find_spec("matplotlib") is None:
        return
    source = sink.report_source()
    if source is None:  # nothing of spherewatch's was logged
        return
    try:
        from spherewatch.report import build_report  # lazy: matplotlib, and only at close

        with tempfile.TemporaryDirectory(prefix="spherewatch-report-") as tmp:
            build_report(source["run"], tmp, tracking_uri=source.get("tracking_uri"),
                         prefix=source.get("prefix", "spherewatch"))
            sink.log_artifacts(tmp, REPORT_ARTIFACT_DIR)
    except Exception as err:  # noqa: BLE001 - the report is a bonus: the run's data is already logged
        logger.warning("spherewatch: could not attach the report to %s run %s (%s: %s).", sink.name,
                       source["run"], type(err).__name__, err)
