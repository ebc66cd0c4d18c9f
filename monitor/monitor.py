"""The :class:`Monitor` engine: capture -> schedule -> buffer -> metrics -> readback -> alerts -> sinks."""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch

from spherewatch import distributed as dist_utils
from spherewatch.alerts.alert import Alert
from spherewatch.buffer import RowReservoir
from spherewatch.capture import Selector, extract_embeddings
from spherewatch.compute import compute_tap_metrics
from spherewatch.config import MonitorConfig, load_config
from spherewatch.errors import SpherewatchError
from spherewatch.schedule import Schedule

__all__ = ["Monitor"]

logger = logging.getLogger("spherewatch")

_STATE_VERSION = 1
_SINK_METHODS = ("log_scalars", "log_histogram", "log_alert", "flush", "close")

def _dynamo_disable(fn):
    """Run ``fn`` eagerly even inside a torch.compile'd model: the capture path is never traced. Imported lazily
    (``torch._dynamo`` costs seconds at import), only when a module is watched."""
    try:
        from torch._dynamo import disable
    except Exception:  # pragma: no cover - very old torch
        return fn
    return disable(fn)


class _RankZeroChannel:
    """Deliver through ``inner`` on rank zero only (a webhook posts once per alert, not once per rank)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def send(self, alert: Alert) -> None:
        if dist_utils.rank() == 0:
            self.inner.send(alert)

    def close(self, timeout: float = 5.0) -> None:
        self.inner.close(timeout)

    def __repr__(self) -> str:
        return f"RankZero({self.inner!r})"


class _WriterFaults:
    """How the writer reports: through the Monitor's once-per-part fault reporting (``recovered`` re-arms it)."""

    def __init__(self, monitor: "Monitor") -> None:
        self._monitor = monitor

    def report(self, part: str, exc: BaseException, consequence: str = "skipped", step: Optional[int] = None) -> None:
        self._monitor._fault(part, exc, consequence, step=step)

    def recovered(self, part: str) -> None:
        self._monitor._reported.discard(part)


class Monitor:
    """Watches embedding geometry during training and alerts when it collapses.

    Three calls in a training loop::

        mon = sw.Monitor(every_n_steps=50, sinks=("tensorboard",))
        ...
        mon.observe(z1, z2)          # after the forward pass (or: mon.watch(model.encoder) once)
        mon.step(global_step)        # after the optimizer step; returns the alerts fired now

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
    come back to the host once. Nothing here takes the training run down: a failure is reported once (log and
    alert channels) and that part is skipped or retried; ``strict=True`` raises a :class:`SpherewatchError`.
    """

    def __init__(
        self,
        config: Union[None, MonitorConfig, Mapping[str, Any], str, os.PathLike] = None,
        *,
        sinks: Optional[Sequence[Any]] = None,
        on_alert: Union[None, Callable[[Alert], Any], Sequence[Callable[[Alert], Any]]] = None,
        **overrides: Any,
    ) -> None:
        objects: List[Any] = []
        if sinks is not None:
            if isinstance(sinks, str):
                sinks = (sinks,)
            names = tuple(s for s in sinks if isinstance(s, str))
            objects = [s for s in sinks if not isinstance(s, str)]
            for obj in objects:  # a bad object would otherwise fail at the first write and take every sink with it
                missing = [m for m in _SINK_METHODS if not callable(getattr(obj, m, None))]
                if missing:
                    raise TypeError(
                        f"Expected sink names ('tensorboard', 'mlflow', 'jsonl', 'memory') or sink objects with "
                        f"{', '.join(_SINK_METHODS)} (see spherewatch.sinks.Sink); {type(obj).__name__} lacks "
                        f"{', '.join(missing)}."
                    )
            if names or not objects:
                overrides["sinks"] = names
        self.config: MonitorConfig = load_config(config, **overrides)
        cfg = self.config
        self._schedule = Schedule(cfg.every_n_steps, cfg.start_step, cfg.log_spaced)
        self._spectral_schedule = Schedule(cfg.spectral_every_n_steps or cfg.every_n_steps, cfg.start_step)
        self._buffers: Dict[str, RowReservoir] = {}
        self._captured: Dict[str, int] = {}
        self._epoch = 0
        self._last_step: Optional[int] = None
        self._stepping: Optional[int] = None  # the step being evaluated (faults raised there carry it)
        self._next_eval: Optional[int] = None
        self._next_spectral: Optional[int] = None
        self._evaluations = 0
        first = self._schedule.next_after(-1)
        self._armed = cfg.sample_first_step or first < cfg.window_steps
        self._should_stop = False
        self._defer_strict = False  # inside a distributed evaluation: strict failures wait for the last collective
        self._deferred: Optional[SpherewatchError] = None
        self._closed = False
        self._handles: List[Any] = []
        self._reported: set = set()
        self.faults: Dict[str, int] = defaultdict(int)
        self.captures: Dict[str, int] = defaultdict(int)
        self.last_values: Dict[str, float] = {}
        #: step of the latest evaluation (decided from the step alone: the same on every rank)
        self.last_evaluation_step: Optional[int] = None
        self.alerts: List[Alert] = []
        self._warned_empty = False
        from spherewatch.redact import install_log_redaction
        from spherewatch.writer import RecordWriter

        install_log_redaction()
        # validates the sinks now (missing extra, bad tracking URI scheme); opens them on its thread, rank zero only
        self._writer = RecordWriter(cfg, objects, _WriterFaults(self))
        callbacks = [] if on_alert is None else ([on_alert] if callable(on_alert) else list(on_alert))
        self._alert_engine = None
        self._dispatcher = None
        self._setup_alerts(callbacks)

    # ------------------------------------------------------------------ setup
    def _setup_alerts(self, callbacks: List[Callable[[Alert], Any]]) -> None:
        from spherewatch.alerts.channels import AlertDispatcher, CallableChannel, LoggingChannel
        from spherewatch.alerts.engine import AlertEngine

        cfg = self.config
        self._alert_engine = AlertEngine(cfg.alert_rules, prefix=cfg.prefix)
        # logging, warnings and the webhook on rank zero only; user callables on every rank (they may act locally)
        channels: List[Any] = [_RankZeroChannel(LoggingChannel(warn=cfg.warn))]
        channels += [CallableChannel(fn) for fn in callbacks]
        url = cfg.webhook_url.get_secret_value() if cfg.webhook_url is not None else os.environ.get(
            "SPHEREWATCH_WEBHOOK_URL"
        )
        if url:
            from spherewatch.alerts.webhook import WebhookChannel

            channels.append(_RankZeroChannel(WebhookChannel(url, timeout=cfg.webhook_timeout,
                                                            on_give_up=self._webhook_gave_up)))
        self._dispatcher = AlertDispatcher(channels, strict=cfg.strict, on_error=self._channel_error)

    def _webhook_gave_up(self, alert: Alert, exc: Exception) -> None:
        """An alert the webhook could not deliver (called from its thread): a monitor fault like any other; under
        ``strict`` it is raised by the next :meth:`step` (it cannot be raised into the training thread from here)."""
        if self.config.strict:
            self.faults["webhook"] += 1
            if self._deferred is None:
                err = SpherewatchError(f"spherewatch webhook failed: {exc}")
                err.__cause__ = exc
                self._deferred = err
            return
        self._fault("webhook", exc, "that alert was not delivered")

    def _channel_error(self, channel: Any, exc: BaseException) -> None:
        """Count a channel failure (the dispatcher already logged it once)."""
        inner = getattr(channel, "inner", channel)
        self.faults[f"channel:{type(inner).__name__}"] += 1

    # ------------------------------------------------------------------ faults
    def _fault(self, part: str, exc: BaseException, consequence: str = "skipped", step: Optional[int] = None) -> None:
        """Report a failure once per part (log + alert channels), or raise under ``strict``."""
        from spherewatch.redact import redact

        self.faults[part] += 1
        text = redact(str(exc))  # an MLflow error holds the tracking URI, credentials included
        if self.config.strict:
            err = SpherewatchError(f"spherewatch {part} failed: {type(exc).__name__}: {text}")
            if self._defer_strict:  # step() raises it once this rank has reached every collective
                if self._deferred is None:
                    err.__cause__ = exc
                    self._deferred = err
                return
            raise err from exc
        if part in self._reported:
            return
        self._reported.add(part)
        logger.error("spherewatch: %s failed (%s: %s); %s. Training continues.", part, type(exc).__name__, text,
                     consequence, exc_info=exc)
        if step is None:
            step = self._stepping if self._stepping is not None else self._last_step
        alert = Alert(
            rule="monitor_fault",
            key=f"{self.config.prefix}/monitor/{part}",
            value=float("nan"),
            step=-1 if step is None else step,
            severity="warning",
            message=f"spherewatch {part} failed ({type(exc).__name__}: {text}); {consequence}. Training continues.",
        )
        try:
            self._dispatcher.dispatch([alert])
        except Exception:  # pragma: no cover - the dispatcher already isolates channels
            pass

    def report_fault(self, part: str, exc: BaseException, consequence: str = "skipped") -> None:
        """Report a failure of ``part`` the way the Monitor reports its own (for adapters): once per part, to the
        log and the alert channels; raises :class:`SpherewatchError` under ``strict``."""
        self._fault(part, exc, consequence)

    # ------------------------------------------------------------------ capture
    @property
    def armed(self) -> bool:
        """True while the coming forward passes are captured (a capture step)."""
        return self._armed

    def observe(
        self,
        z: torch.Tensor,
        z_pos: Optional[torch.Tensor] = None,
        *,
        tap: Optional[str] = None,
        labels: Optional[torch.Tensor] = None,
        pool: Optional[str] = None,
    ) -> None:
        """Hand over a batch of embeddings ``(N, D)`` (and optionally its paired view and labels).

        Cheap to call on every step: it returns at once unless this is a capture step. At most one batch per tap
        is taken per step (gradient accumulation and re-computation do not double count). ``(B, T, H)`` tensors
        need ``pool=`` ('mean', 'first' or 'last').
        """
        if not self._armed or self._closed:
            return
        tap = tap or self.config.default_tap
        if self._captured.get(tap) == self._epoch:
            return
        self._captured[tap] = self._epoch
        try:
            self._capture(tap, z, z_pos, labels, pool)
        except Exception as exc:
            self._fault(f"capture:{tap}", exc, "this batch was not recorded")

    def _validate_batch(self, tap: str, z: Any, name: str, pool: Optional[str]) -> torch.Tensor:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"Expected `{name}` for tap {tap!r} to be a torch.Tensor (N, D), got {type(z).__name__}.")
        if z.ndim == 3:
            z = extract_embeddings(z, pool=pool)
        if z.ndim != 2:
            raise ValueError(
                f"Expected `{name}` for tap {tap!r} to be a 2-D tensor (N, D), got shape {tuple(z.shape)}"
                + (": pass `pool='mean'` to pool tokens." if z.ndim == 3 else ".")
            )
        if z.is_complex() or not z.is_floating_point():
            raise TypeError(
                f"Expected `{name}` for tap {tap!r} to have a floating dtype, got {z.dtype}. Convert with `.float()`."
            )
        return z

    def _capture(self, tap, z, z_pos, labels, pool) -> None:
        z = self._validate_batch(tap, z, "z", pool)
        if z_pos is not None:
            z_pos = self._validate_batch(tap, z_pos, "z_pos", pool)
            if z_pos.shape != z.shape:
                raise ValueError(
                    f"Expected `z_pos` to match `z` for tap {tap!r}, got {tuple(z_pos.shape)} and {tuple(z.shape)}."
                )
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != z.shape[0]:
                raise ValueError(f"Expected `labels` of shape ({z.shape[0]},) for tap {tap!r}, got "
                                 f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}.")
            if labels.is_floating_point() or labels.is_complex():
                raise TypeError(f"Expected integer `labels`, got {labels.dtype}.")
        buf = self._buffers.get(tap)
        if buf is None:
            buf = self._buffers[tap] = RowReservoir(self.config.max_samples, seed=self.config.seed + len(self._buffers))
        if buf.seen and buf._z.device != z.device:  # e.g. embeddings moved: follow the window's first device
            z = z.to(buf._z.device)
            z_pos = None if z_pos is None else z_pos.to(buf._z.device)
            labels = None if labels is None else labels.to(buf._z.device)
        buf.add(z, z_pos, labels)
        self.captures[tap] += 1

    def watch(
        self,
        module: torch.nn.Module,
        tap: Optional[str] = None,
        *,
        select: Selector = None,
        pool: Optional[str] = None,
    ):
        """Capture the output of ``module`` with a forward hook, installed once and armed only on capture steps.

        Args:
            module: any ``nn.Module`` (install before ``torch.compile``: hooks added afterwards never fire).
            tap: name used in the log keys (default ``config.default_tap``).
            select: which part of a tuple / dict / HF ``ModelOutput`` output holds the embeddings: a key, an index
                or a callable (default: the tensor itself, element 0 of a tuple, or the first of
                ``embeddings, pooler_output, last_hidden_state, ...`` in a dict).
            pool: pooling of ``(B, T, H)`` outputs (default ``config.pool``: mean over tokens, honouring an
                ``attention_mask`` keyword argument of the module when there is one).

        Returns:
            a handle with ``.remove()``.
        """
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"Expected an nn.Module to watch, got {type(module).__name__}.")
        tap = tap or self.config.default_tap
        pool = pool or self.config.pool

        @_dynamo_disable
        def _take(output: Any, kwargs: Mapping[str, Any]) -> None:
            if self._captured.get(tap) == self._epoch or self._closed:
                return
            self._captured[tap] = self._epoch
            try:
                mask = kwargs.get("attention_mask") if kwargs else None
                z = extract_embeddings(output, select=select, pool=pool,
                                       mask=mask if isinstance(mask, torch.Tensor) else None)
                self._capture(tap, z, None, None, pool)
            except Exception as exc:
                self._fault(f"capture:{tap}", exc, "this batch was not recorded")

        def hook(mod, args, kwargs, output):
            if self._armed:
                _take(output, kwargs)

        handle = module.register_forward_hook(hook, with_kwargs=True)
        self._handles.append(handle)
        return handle

    # ------------------------------------------------------------------ stepping
    def step(self, global_step: Optional[int] = None) -> List[Alert]:
        """Advance to ``global_step`` (call once per optimizer step, after it). Evaluates when due.

        Returns the alerts fired at this step (usually empty).
        """
        if self._closed:
            return []
        s = (0 if self._last_step is None else self._last_step + 1) if global_step is None else int(global_step)
        first = self._last_step is None
        if not first and s <= self._last_step:  # restarted counter without load_state_dict
            self._next_eval = None
        if self._next_eval is None:
            self._next_eval = self._schedule.next_after(s - 1)
        due = s >= self._next_eval or (first and self.config.sample_first_step and self._evaluations == 0)
        fired: List[Alert] = []
        if due:
            self._stepping = s
            self._writer.hold(True)  # the writer thread waits between writes: no GIL contention with the evaluation
            try:
                fired = self._evaluate(s)
            finally:
                self._stepping = None
                self._writer.hold(False)
            self._next_eval = self._schedule.next_after(s)
            self.last_evaluation_step = s
        elif self._next_eval - s >= self.config.window_steps:
            # rows captured at a step outside the coming evaluation's window (e.g. a first step that was not
            # an evaluation step after all) must not leak into it
            for buf in self._buffers.values():
                buf.clear()
        self._last_step = s
        self._epoch += 1
        self._armed = self._next_eval - (s + 1) < self.config.window_steps
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise err
        return fired

    def _taps(self) -> List[str]:
        names = list(self._buffers)
        if dist_utils.is_distributed():
            names = dist_utils.union_names(names)
        return names

    def _evaluate(self, s: int) -> List[Alert]:
        if not (self.config.strict and dist_utils.is_distributed()):
            return self._evaluate_step(s)
        # strict under DDP: raising at the first failure would leave the other ranks waiting in a collective (and
        # this rank off their schedule); step() raises it once the evaluation and the schedule update are done
        self._defer_strict = True
        try:
            return self._evaluate_step(s)
        finally:
            self._defer_strict = False

    def _evaluate_step(self, s: int) -> List[Alert]:
        cfg = self.config
        distributed = dist_utils.is_distributed()
        spectral = self._next_spectral is None or s >= self._next_spectral
        tensors: Dict[str, torch.Tensor] = {}
        hists: Dict[str, torch.Tensor] = {}
        try:
            taps = self._taps()
        except Exception as exc:
            self._fault("distributed", exc, "this evaluation was skipped")
            return []
        for tap in taps:
            buf = self._buffers.get(tap)
            try:
                rows = buf.rows() if buf is not None else (None, None, None)
            except Exception as exc:  # pragma: no cover - defensive
                self._fault(f"buffer:{tap}", exc)
                rows = (None, None, None)
            if distributed:
                try:
                    rows = dist_utils.gather_rows(rows, max_rows=cfg.max_samples, seed=cfg.seed + self._evaluations)
                except Exception as exc:
                    self._fault("distributed", exc, "this tap was skipped at this step")
                    rows = (None, None, None)
            if buf is not None:
                buf.clear()
            z, z_pos, labels = rows
            if z is None:
                continue
            try:
                sc, hi = compute_tap_metrics(
                    z, z_pos, labels, cfg.metric_names, spectral=spectral, t=cfg.uniformity_t,
                    alpha=cfg.alignment_alpha, num_classes=cfg.num_classes,
                )
            except Exception as exc:
                self._fault(f"metrics:{tap}", exc, "its metrics were skipped at this step")
                continue
            base = f"{cfg.prefix}/{tap}/"
            tensors.update({base + k: v for k, v in sc.items()})
            hists.update({base + k: v for k, v in hi.items()})
        if spectral:
            self._next_spectral = self._spectral_schedule.next_after(s)
        self._evaluations += 1
        stop_local = False
        fired: List[Alert] = []
        if tensors:
            try:
                values, hist_values = self._readback(tensors, hists)
            except Exception as exc:
                self._fault("readback", exc, "this evaluation was skipped")
                values, hist_values = {}, {}
            if values:
                fired = self._alerts_for(s, values)
                stop_local = any(a.action == "stop" for a in fired)
                self.last_values = values
                self._write(s, values, hist_values, fired)
        elif not self._warned_empty:
            self._warned_empty = True
            logger.warning(
                "spherewatch: no usable embeddings reached the monitor for the evaluation at step %d. Call "
                "`monitor.observe(z)` after the forward pass on every step (or `monitor.watch(module)` before "
                "training); batches that were empty or rejected are not counted.", s,
            )
        if distributed:
            try:
                stop_local = dist_utils.any_true(stop_local or self._should_stop)
            except Exception as exc:
                self._fault("distributed", exc, "the stop decision stays local")
        if stop_local:
            self._should_stop = True
        return fired

    @staticmethod
    def _readback(tensors: Dict[str, torch.Tensor], hists: Dict[str, torch.Tensor]):
        """One device-to-host copy per device for every value of this evaluation."""
        by_device: Dict[torch.device, List[str]] = defaultdict(list)
        for k, v in tensors.items():
            by_device[v.device].append(k)
        for k, v in hists.items():
            by_device[v.device].append(k)
        values: Dict[str, float] = {}
        hist_values: Dict[str, List[float]] = {}
        for keys in by_device.values():
            parts = [(tensors[k] if k in tensors else hists[k]).detach().float().reshape(-1) for k in keys]
            flat = torch.cat(parts).cpu().tolist()
            i = 0
            for k, p in zip(keys, parts):
                n = p.numel()
                if k in tensors:
                    values[k] = flat[i]
                else:
                    hist_values[k] = flat[i : i + n]
                i += n
        return values, hist_values

    def _alerts_for(self, s: int, values: Dict[str, float]) -> List[Alert]:
        try:
            fired = list(self._alert_engine.update(s, values))
        except Exception as exc:
            self._fault("alerts", exc, "alert rules were skipped at this step")
            return []
        if fired:
            self.alerts.extend(fired)
            try:
                self._dispatcher.dispatch(fired)
            except Exception as exc:
                self._fault("alert channels", exc)
        return fired

    # ------------------------------------------------------------------ sinks (the writer thread does all sink I/O)
    @property
    def sinks(self) -> List[Any]:
        """The sinks this monitor writes to (the inner sink of each resilient wrapper), once every record submitted
        so far was handed to them (waits at most ``close_timeout``)."""
        return self._writer.sinks

    def sink(self, name: str):
        """The first sink whose ``name`` is ``name`` (e.g. ``"memory"``), once the records so far were written."""
        return self._writer.sink(name)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every evaluation so far was handed to the sinks and they flushed (at most ``timeout`` seconds,
        default ``close_timeout``). Sinks are written by a background thread: call this (or :meth:`close`) before
        reading what they hold. Returns True when done in time."""
        return self._writer.flush(timeout)

    def _write(self, s: int, values: Dict[str, float], hists: Dict[str, List[float]], fired: Iterable[Alert]) -> None:
        self._writer.submit(s, values, hists, list(fired))

    # ------------------------------------------------------------------ state
    @property
    def should_stop(self) -> bool:
        """True once a rule whose action is ``"stop"`` has fired (the same on every rank)."""
        return self._should_stop

    @property
    def global_step(self) -> Optional[int]:
        return self._last_step

    def state_dict(self) -> Dict[str, Any]:
        """Alert state, baselines and schedule position (JSON-serialisable). Buffers are not saved: a resumed run
        captures afresh at its next window."""
        return {
            "version": _STATE_VERSION,
            "last_step": self._last_step,
            "next_eval": self._next_eval,
            "next_spectral": self._next_spectral,
            "evaluations": self._evaluations,
            "should_stop": self._should_stop,
            "alert_engine": self._alert_engine.state_dict(),
            "alerts": [a.to_dict() for a in self.alerts],
            "last_values": dict(self.last_values),
            "writer": self._writer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"Expected a dict from Monitor.state_dict(), got {type(state).__name__}.")
        self._last_step = state.get("last_step")
        self._next_eval = state.get("next_eval")
        self._next_spectral = state.get("next_spectral")
        self._evaluations = int(state.get("evaluations", 0))
        self._should_stop = bool(state.get("should_stop", False))
        if "alert_engine" in state:
            self._alert_engine.load_state_dict(state["alert_engine"])
        self.alerts = [Alert.from_dict(a) for a in state.get("alerts", [])]
        self.last_values = dict(state.get("last_values", {}))
        self._writer.load_state_dict(state.get("writer", {}))
        if self._last_step is not None and self._next_eval is not None:
            self._armed = self._next_eval - (self._last_step + 1) < self.config.window_steps
        for buf in self._buffers.values():
            buf.clear()

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: Optional[float] = None) -> None:
        """Remove hooks; let the writer hand what is queued to the sinks and close them, for at most ``timeout``
        seconds (default ``close_timeout``: the rest stays in the spool folder, named in a log line); close the alert
        channels (queued webhook alerts are sent). Idempotent, and safe to call from a signal handler."""
        if self._closed:
            return
        self._closed = True
        for h in self._handles:
            try:
                h.remove()
            except Exception:  # pragma: no cover
                pass
        self._writer.close(timeout)
        try:
            self._dispatcher.close()
        except Exception as exc:  # pragma: no cover
            self._fault("alert channels", exc)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        cfg = self.config
        return (f"Monitor(every_n_steps={cfg.every_n_steps}, metrics={list(cfg.metric_names)}, "
                f"taps={sorted(self._buffers)}, step={self._last_step})")

