"""The :class:`Monitor` engine: capture -> schedule -> buffer -> metrics -> readback -> alerts -> sinks."""
from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch

from spherewatch import distributed as dist_utils
from spherewatch.alerting import AlertPipeline
from spherewatch.alerts.alert import Alert
from spherewatch.buffer import RowReservoir
from spherewatch.capture import Selector, extract_embeddings
from spherewatch.compute import compute_tap_metrics
from spherewatch.config import _KEY_SAFE, MonitorConfig, load_config
from spherewatch.faults import FaultReporter
from spherewatch.schedule import Schedule

__all__ = ["Monitor"]

logger = logging.getLogger("spherewatch")

_STATE_VERSION = 1
_SINK_METHODS = ("log_scalars", "log_histogram", "log_alert", "flush", "close")

def _check_tap(tap: Any) -> str:
    """A tap name is part of every key ``<prefix>/<tap>/<metric>``: letters, digits, ``_ . -`` only."""
    if not isinstance(tap, str) or not _KEY_SAFE.match(tap):
        raise ValueError(f"Expected a tap name made of letters, digits, '_', '.' and '-' (it is part of the log keys "
                         f"<prefix>/<tap>/<metric>), got {tap!r}.")
    return tap


_is_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)
"""True while ``torch.compile`` (dynamo) traces the calling code; a flag read in eager mode."""


def deferred_output_hook(
    pending: Dict[Any, Any], key: Any, fire: Callable[[], bool], take: Callable[[Any, Mapping[str, Any]], None],
    *, training_only: bool = False,
) -> Callable[..., None]:
    """A forward hook ``(module, args, kwargs, output)`` that is safe inside ``torch.compile(fullgraph=True)``.

    Eagerly it calls ``take(output, kwargs)`` when ``fire()`` is true. While dynamo traces it, it only stores
    ``(take, output, attention_mask)`` under ``pending[key]`` -- a dict store that dynamo replays after the graph
    has run, so there is no graph break, no guard on ``fire()``'s flag and no recompile when the monitor arms or
    disarms. The owner calls ``take`` on what is pending, eagerly, at its next ``step()``; the first forward pass
    since the last step is kept, as in eager mode. ``training_only`` skips passes of a module in eval mode
    (``take`` runs at ``step()``, when the module is usually back in training mode, so it cannot tell).
    """

    def hook(mod: Any, args: Any, kwargs: Any, output: Any) -> None:
        if _is_compiling():
            if training_only and not mod.training:  # a guarded constant for dynamo: no recompile per step
                return
            mask = kwargs.get("attention_mask") if kwargs else None
            # setdefault: the first forward pass of the step wins, as in eager mode (gradient accumulation)
            pending.setdefault(key, (take, output.detach() if isinstance(output, torch.Tensor) else output,
                                     {} if mask is None else {"attention_mask": mask}))
            return
        if fire():
            take(output, kwargs)

    return hook


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
        self._closed = False
        self._handles: List[Any] = []
        # outputs of watched modules seen while torch.compile traced them, taken eagerly at the next step()
        self._pending_outputs: Dict[Any, Any] = {}
        self._hooks_made = 0
        self.captures: Dict[str, int] = defaultdict(int)
        self.last_values: Dict[str, float] = {}
        #: step of the latest evaluation (decided from the step alone: the same on every rank)
        self.last_evaluation_step: Optional[int] = None
        self._warned_empty = False
        self._extra_sinks = objects
        self._sinks: Optional[List[Any]] = None  # opened lazily, on rank zero, at the first write
        callbacks = [] if on_alert is None else ([on_alert] if callable(on_alert) else list(on_alert))
        self._faults = FaultReporter(cfg, lambda alerts: self._alerting.dispatch(alerts), self._fault_step)
        #: failures per part, every one counted (reports are bounded: see spherewatch.faults)
        self.faults: Dict[str, int] = self._faults.counts
        self._alerting = AlertPipeline(cfg, callbacks, self._faults)

    # ------------------------------------------------------------------ faults
    def _fault_step(self) -> Optional[int]:
        """The step a failure belongs to: the one being evaluated, else the one being trained (never -1)."""
        if self._stepping is not None:
            return self._stepping
        if self._last_step is not None:
            return self._last_step + 1
        return self.config.start_step

    def _fault(self, part: str, exc: BaseException, consequence: str = "skipped") -> None:
        self._faults.report(part, exc, consequence)

    def report_fault(self, part: str, exc: BaseException, consequence: str = "skipped") -> None:
        """Report a failure of ``part`` the way the Monitor reports its own (for adapters): once per part and
        kind of failure (see :mod:`spherewatch.faults`), as a ``MonitorFault``; raises :class:`SpherewatchError`
        under ``strict``."""
        self._faults.report(part, exc, consequence)

    @property
    def alerts(self) -> List[Alert]:
        """The latest alert events (fired, reminders, resolved), oldest first; bounded (the last
        :data:`~spherewatch.alerting.HISTORY_LIMIT`), the sinks keep every one."""
        return list(self._alerting.history)

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
        if _is_compiling():  # inside torch.compile: a dict store dynamo can trace; taken eagerly at step()
            self._pending_outputs.setdefault(f"observe:{tap}", (self._take_observed, (z, z_pos, tap, labels, pool), {}))
            return
        if not self._armed or self._closed:
            return
        tap = tap or self.config.default_tap
        if self._captured.get(tap) == self._epoch:
            return
        self._captured[tap] = self._epoch
        try:
            _check_tap(tap)
            self._capture(tap, z, z_pos, labels, pool)
        except Exception as exc:
            self._fault(f"capture:{tap}", exc, "this batch was not recorded")

    def _take_observed(self, args: Any, kwargs: Mapping[str, Any]) -> None:
        z, z_pos, tap, labels, pool = args
        self.observe(z, z_pos, tap=tap, labels=labels, pool=pool)

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
            self._check_buffer_bytes(tap, z, z_pos)
            buf = self._buffers[tap] = RowReservoir(self.config.max_samples, seed=self.config.seed + len(self._buffers))
        if buf._z is not None and buf._z.device != z.device:  # e.g. embeddings moved: follow the first device
            z = z.to(buf._z.device)
            z_pos = None if z_pos is None else z_pos.to(buf._z.device)
            labels = None if labels is None else labels.to(buf._z.device)
        buf.add(z, z_pos, labels)
        self.captures[tap] += 1
        self._faults.recovered(f"capture:{tap}")

    def _check_buffer_bytes(self, tap: str, z: torch.Tensor, z_pos: Optional[torch.Tensor]) -> None:
        """Refuse a tap whose buffer would exceed ``max_buffer_bytes`` -- before anything is allocated."""
        cfg = self.config
        views = 1 if z_pos is None else 2
        need = cfg.max_samples * int(z.shape[1]) * 4 * views  # rows are kept in fp32
        if need > cfg.max_buffer_bytes:
            raise MemoryError(
                f"the buffer of tap {tap!r} would take {need / 2**20:.1f} MiB (max_samples={cfg.max_samples} x "
                f"D={int(z.shape[1])} x 4 bytes x {views} view(s)), more than max_buffer_bytes="
                f"{cfg.max_buffer_bytes}; lower `max_samples` or raise `max_buffer_bytes`"
            )

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
            module: any ``nn.Module`` (install before ``torch.compile``: hooks added afterwards never fire). Safe
                inside ``torch.compile(fullgraph=True)``: there the hook keeps the output and the rows are taken at
                the next :meth:`step` (no graph break, no recompile; see :func:`deferred_output_hook`).
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
        tap = _check_tap(tap or self.config.default_tap)
        pool = pool or self.config.pool

        def _take(output: Any, kwargs: Mapping[str, Any]) -> None:
            if not self._armed or self._captured.get(tap) == self._epoch or self._closed:
                return
            self._captured[tap] = self._epoch
            try:
                mask = kwargs.get("attention_mask") if kwargs else None
                z = extract_embeddings(output, select=select, pool=pool,
                                       mask=mask if isinstance(mask, torch.Tensor) else None)
                self._capture(tap, z, None, None, pool)
            except Exception as exc:
                self._fault(f"capture:{tap}", exc, "this batch was not recorded")

        hook = self.output_hook(lambda: self._armed, _take)
        handle = module.register_forward_hook(hook, with_kwargs=True)
        self._handles.append(handle)
        return handle

    def output_hook(
        self, fire: Callable[[], bool], take: Callable[[Any, Mapping[str, Any]], None], *, training_only: bool = False
    ) -> Callable[..., None]:
        """A forward hook calling ``take(output, kwargs)`` when ``fire()`` is true, safe under ``torch.compile``
        (``fullgraph=True`` included): inside a compiled region the output is kept and ``take`` runs eagerly at the
        next :meth:`step`. For adapters; register it with ``module.register_forward_hook(hook, with_kwargs=True)``."""
        self._hooks_made += 1
        return deferred_output_hook(self._pending_outputs, f"hook:{self._hooks_made}", fire, take,
                                    training_only=training_only)

    def take_pending_outputs(self) -> None:
        """Take, eagerly, the outputs that watched modules produced inside a ``torch.compile``'d region since the
        last step (``step()`` does this first; adapters that evaluate without ``step()`` may call it)."""
        if not self._pending_outputs:
            return
        pending = list(self._pending_outputs.values())
        self._pending_outputs.clear()
        for take, output, kwargs in pending:
            try:
                take(output, kwargs)
            except Exception as exc:  # take() reports its own failures; this is the last line of defence
                self._fault("capture", exc, "this batch was not recorded")

    # ------------------------------------------------------------------ stepping
    def step(self, global_step: Optional[int] = None) -> List[Alert]:
        """Advance to ``global_step`` (call once per optimizer step, after it). Evaluates when due.

        Returns the alerts fired at this step (usually empty): new alerts and reminders of open ones, never
        "resolved" events (those go to the sinks, the log and :attr:`alerts`).
        """
        if self._closed:
            return []
        self.take_pending_outputs()
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
            try:
                fired = self._evaluate(s)
            finally:
                self._stepping = None
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
        self._faults.raise_deferred()
        self._alerting.raise_escalated()  # a CollapseWarning escalated by a warnings filter: raised here, in user code
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
        with self._faults.deferring():
            return self._evaluate_step(s)

    def _evaluate_step(self, s: int) -> List[Alert]:
        cfg = self.config
        distributed = dist_utils.is_distributed()
        spectral = self._next_spectral is None or s >= self._next_spectral
        tensors: Dict[str, torch.Tensor] = {}
        hists: Dict[str, torch.Tensor] = {}
        had_rows = False
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
            had_rows = True
            failures: Dict[str, BaseException] = {}
            try:
                sc, hi = compute_tap_metrics(
                    z, z_pos, labels, cfg.metric_names, spectral=spectral, t=cfg.uniformity_t,
                    alpha=cfg.alignment_alpha, num_classes=cfg.num_classes, failures=failures,
                )
            except Exception as exc:
                self._fault(f"metrics:{tap}", exc, "its metrics were skipped at this step")
                continue
            self._faults.recovered(f"metrics:{tap}")
            for name, exc in failures.items():  # one failing metric drops only itself
                self._fault(f"metric:{tap}/{name}", exc, f"{name} was not logged at this step; the other metrics were")
            for name in sc:
                self._faults.recovered(f"metric:{tap}/{name}")
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
                self._faults.recovered("readback")
            except Exception as exc:
                self._fault("readback", exc, "this evaluation was skipped")
                values, hist_values = {}, {}
            if values:
                events = self._alerting.update(s, values)  # fired, reminders and resolved: all go to the sinks
                fired = [a for a in events if a.status == "fired"]
                stop_local = any(a.action == "stop" for a in fired)
                self.last_values = values
                self._write(s, values, hist_values, events)
        elif not self._warned_empty and not had_rows:  # rows that only failed in the metrics were reported as such
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

    # ------------------------------------------------------------------ sinks
    def _open_sinks(self) -> List[Any]:
        from spherewatch.sinks import JsonlSink, MemorySink, MLflowSink, ResilientSink, TensorBoardSink

        cfg = self.config
        names = cfg.sinks if cfg.sinks is not None else (() if self._extra_sinks else ("jsonl",))
        spool_dir = cfg.spool_dir or os.path.join(cfg.log_dir, "spool")
        opened: List[Any] = []
        for name in names:
            try:
                if name == "tensorboard":
                    sink = TensorBoardSink(cfg.log_dir, prefix=cfg.prefix)
                elif name == "mlflow":
                    sink = MLflowSink(cfg.tracking_uri, run_id=cfg.run_id, experiment_name=cfg.experiment_name,
                                      run_name=cfg.run_name, prefix=cfg.prefix)
                elif name == "jsonl":
                    sink = JsonlSink(cfg.resolved_jsonl_path)
                else:
                    sink = MemorySink()
            except Exception as exc:
                self._fault(f"sink:{name}", exc, "this sink is disabled")
                continue
            opened.append(sink)
        opened += self._extra_sinks
        if not opened and names:
            logger.error("spherewatch: no sink could be opened; writing to %s instead.", cfg.resolved_jsonl_path)
            opened.append(JsonlSink(cfg.resolved_jsonl_path))
        wrapped = []
        for sink in opened:
            if isinstance(sink, ResilientSink):
                wrapped.append(sink)
                continue
            name = getattr(sink, "name", type(sink).__name__)
            spool = os.path.join(spool_dir, f"{name}-{len(wrapped)}.spool.jsonl")
            wrapped.append(ResilientSink(sink, spool_path=spool, on_error=self._sink_error, strict=cfg.strict))
        return wrapped

    def _sink_error(self, name: str, exc: BaseException) -> None:
        self._fault(f"sink:{name}", exc, "its points are spooled and replayed when it recovers")

    @property
    def sinks(self) -> List[Any]:
        """The sinks this monitor writes to (the inner sink of each resilient wrapper), opened on first use."""
        if self._sinks is None:
            if dist_utils.rank() != 0:
                return []
            self._sinks = self._open_sinks()
        return [getattr(s, "inner", s) for s in self._sinks]

    def sink(self, name: str):
        """The first sink whose ``name`` is ``name`` (e.g. ``"memory"``)."""
        for s in self.sinks:
            if getattr(s, "name", None) == name:
                return s
        raise KeyError(f"No {name!r} sink; open ones: {[getattr(s, 'name', type(s).__name__) for s in self.sinks]}.")

    def _write(self, s: int, values: Dict[str, float], hists: Dict[str, List[float]], fired: Iterable[Alert]) -> None:
        if dist_utils.rank() != 0:
            return
        if self._sinks is None:
            try:
                self._sinks = self._open_sinks()
            except Exception as exc:
                self._fault("sinks", exc, "nothing is written")
                self._sinks = []
        for sink in self._sinks:
            try:
                sink.log_scalars(s, values)
                for k, v in hists.items():
                    if any(math.isfinite(x) for x in v):  # an all-NaN spectrum is reported by the nonfinite rule
                        sink.log_histogram(s, k, v)
                for a in fired:
                    sink.log_alert(a)
                sink.flush()
            except Exception as exc:  # ResilientSink only raises under strict
                self._fault(f"sink:{getattr(sink, 'name', '?')}", exc)

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
            **self._alerting.state_dict(),  # "alert_engine", "alerts" (the bounded history)
            "last_values": dict(self.last_values),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"Expected a dict from Monitor.state_dict(), got {type(state).__name__}.")
        self._last_step = state.get("last_step")
        self._next_eval = state.get("next_eval")
        self._next_spectral = state.get("next_spectral")
        self._evaluations = int(state.get("evaluations", 0))
        self._should_stop = bool(state.get("should_stop", False))
        self._alerting.load_state_dict(state)
        self.last_values = dict(state.get("last_values", {}))
        if self._last_step is not None and self._next_eval is not None:
            self._armed = self._next_eval - (self._last_step + 1) < self.config.window_steps
        for buf in self._buffers.values():
            buf.clear()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Remove hooks, flush and close sinks and channels. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for h in self._handles:
            try:
                h.remove()
            except Exception:  # pragma: no cover
                pass
        for sink in self._sinks or []:
            try:
                sink.close()
            except Exception as exc:
                self._fault(f"sink:{getattr(sink, 'name', '?')}", exc, "it may not have flushed")
        try:
            self._alerting.close()
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

