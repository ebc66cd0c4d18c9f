"""Pieces shared by the adapters: gated forward hooks, a bounded row collector, sinks that write through a
host's loggers or another Monitor's sinks, and the framework-free body of the Lightning callback.

Nothing here imports a training framework; ``lightning.py`` and ``pytorch_lightning.py`` bind the Lightning body
to their own ``Callback`` and logger classes.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from spherewatch.capture import Selector, extract_embeddings
from spherewatch.config import MonitorConfig, load_config
from spherewatch.monitor import Monitor
from spherewatch.sinks.base import Sink

__all__ = [
    "open_monitor",
    "LightningMonitorCallbackCore",
    "LoggerSink",
    "MonitorSinks",
    "RowCollector",
    "add_capture_hook",
    "add_output_hook",
    "report_fault",
    "split_sinks",
]

logger = logging.getLogger("spherewatch.integrations")

# ------------------------------------------------------------------------------------------------ faults
def report_fault(monitor: Monitor, part: str, exc: BaseException, consequence: str = "skipped") -> None:
    """Report a capture failure the way the Monitor reports its own: once per ``part`` (log + alert channels);
    raises :class:`SpherewatchError` when the monitor is ``strict``."""
    monitor.report_fault(part, exc, consequence)


# ------------------------------------------------------------------------------------------------ hooks
def add_output_hook(
    module: torch.nn.Module, fire: Callable[[], bool], take: Callable[[Any, Mapping], None], monitor: Monitor,
    *, training_only: bool = False,
) -> torch.utils.hooks.RemovableHandle:
    """Register a forward hook that calls ``take(output, kwargs)`` when ``fire()`` is true.

    ``fire`` must be cheap (it runs on every forward pass; a flag check). Inside a ``torch.compile``'d region
    (``fullgraph=True`` included) neither is traced: the output is kept and ``take`` runs eagerly at ``monitor``'s
    next ``step()`` (see :meth:`Monitor.output_hook`).
    """
    hook = monitor.output_hook(fire, take, training_only=training_only)
    return module.register_forward_hook(hook, with_kwargs=True)


def extract(output: Any, kwargs: Optional[Mapping], select: Selector, pool: Optional[str]) -> torch.Tensor:
    """``(N, D)`` embeddings from a module's output, pooling tokens with the call's ``attention_mask`` if any."""
    mask = kwargs.get("attention_mask") if kwargs else None
    return extract_embeddings(output, select=select, pool=pool, mask=mask if isinstance(mask, torch.Tensor) else None)


def add_capture_hook(
    monitor: Monitor,
    module: torch.nn.Module,
    *,
    tap: Optional[str] = None,
    select: Selector = None,
    pool: Optional[str] = None,
    when: Callable[[], bool],
) -> torch.utils.hooks.RemovableHandle:
    """Like :meth:`Monitor.watch`, but a capture step only takes the output while ``when()`` is true (e.g. the
    module is in training mode), so evaluation passes between optimizer steps are never mistaken for training
    batches."""
    tap = tap or monitor.config.default_tap
    pool = pool or monitor.config.pool

    def take(output: Any, kwargs: Mapping) -> None:
        if not when():
            return
        try:
            z = extract(output, kwargs, select, pool)
        except Exception as exc:
            report_fault(monitor, f"capture:{tap}", exc, "this batch was not recorded")
            return
        monitor.observe(z, tap=tap)

    return add_output_hook(module, lambda: monitor.armed, take, monitor, training_only=True)


class RowCollector:
    """Keeps the first ``max_rows`` rows handed over (detached copies), with their labels when every batch has
    them; for epoch-level embeddings (e.g. a whole validation epoch)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = int(max_rows)
        self._reset()

    def _reset(self) -> None:
        self._z: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []
        self._rows = 0
        self._all_labelled = True

    @property
    def full(self) -> bool:
        return self._rows >= self.max_rows

    def add(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        room = self.max_rows - self._rows
        if room <= 0:
            return
        z = z[:room].detach().clone()
        self._z.append(z)
        self._rows += z.shape[0]
        if labels is None or labels.ndim != 1 or labels.shape[0] < z.shape[0]:
            self._all_labelled = False
        elif self._all_labelled:
            self._labels.append(labels[: z.shape[0]].detach().clone())

    def take(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """All rows so far (concatenated) and their labels (``None`` unless every batch had them), then reset."""
        z = torch.cat(self._z) if self._z else None
        labels = torch.cat(self._labels) if (self._all_labelled and self._labels) else None
        self._reset()
        return z, labels


# ------------------------------------------------------------------------------------------------ sinks
def split_sinks(sinks: Optional[Sequence[Any]]) -> Tuple[Tuple[str, ...], List[Any]]:
    """``sinks=`` as the Monitor takes it: names (config field) and sink objects."""
    if sinks is None:
        return (), []
    if isinstance(sinks, (str, Sink)):
        sinks = (sinks,)
    names = tuple(s for s in sinks if isinstance(s, str))
    return names, [s for s in sinks if not isinstance(s, str)]


class LoggerSink(Sink):
    """Scalars through a Lightning logger's ``log_metrics`` (CSVLogger, WandbLogger, ...): histograms and alerts
    have no common logger API and are left to the Monitor's other sinks and alert channels."""

    def __init__(self, host_logger: Any) -> None:
        super().__init__()
        self.logger = host_logger
        self.name = "lightning_" + type(host_logger).__name__.lower()

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: Optional[float] = None) -> None:
        self._check_open()
        self.logger.log_metrics({str(k): float(v) for k, v in scalars.items()}, step=int(step))

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: Optional[float] = None) -> None:
        self._check_open()

    def log_alert(self, alert: Any) -> None:
        self._check_open()

    def flush(self) -> None:
        if not self._closed and callable(getattr(self.logger, "save", None)):
            self.logger.save()


class MonitorSinks(Sink):
    """Writes into the sinks another Monitor writes to (opened by it, on rank zero), so that a second Monitor
    (validation-epoch metrics) lands in the same event file / run without opening anything itself.

    A failing target is reported once and skipped: it never blocks the others or the owning Monitor.
    """

    name = "shared"

    def __init__(self, owner: Monitor) -> None:
        super().__init__()
        self.owner = owner
        self._reported: set = set()

    def _each(self, call: Callable[[Sink], None]) -> None:
        for sink in self.owner.sinks:
            if getattr(sink, "closed", False):
                continue
            try:
                call(sink)
            except Exception as exc:
                name = getattr(sink, "name", type(sink).__name__)
                if name not in self._reported:
                    self._reported.add(name)
                    logger.warning("spherewatch: writing validation metrics to sink %r failed (%s: %s); skipped.",
                                   name, type(exc).__name__, exc)

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: Optional[float] = None) -> None:
        self._each(lambda s: s.log_scalars(step, scalars, wall_time=wall_time))

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: Optional[float] = None) -> None:
        self._each(lambda s: s.log_histogram(step, key, values, wall_time=wall_time))

    def log_alert(self, alert: Any) -> None:
        self._each(lambda s: s.log_alert(alert))

    def flush(self) -> None:
        self._each(lambda s: s.flush())

    def close(self) -> None:  # the owner closes its sinks
        self._closed = True


def open_monitor(config: MonitorConfig, sinks: List[Any], default_root: str, on_alert: Any) -> Monitor:
    """The adapters' Monitor: writes to ``sinks`` (the host's loggers and the user's sink objects); with neither and
    no sink or folder configured, to JSONL under ``<default_root>/spherewatch`` instead of the working directory."""
    if not sinks and config.sinks is None and not ({"log_dir", "jsonl_path"} & config.model_fields_set):
        config = load_config(config, log_dir=os.path.join(str(default_root), "spherewatch"))
    return Monitor(config, sinks=sinks or None, on_alert=on_alert)


def evaluation_config(config: MonitorConfig, tap: str) -> MonitorConfig:
    """The config of a Monitor that evaluates once per call to ``step`` (epoch-level embeddings) under ``tap``,
    writing only to the sinks it is handed."""
    return load_config(
        config, every_n_steps=1, start_step=0, log_spaced=False, window_steps=1, spectral_every_n_steps=None,
        sample_first_step=True, default_tap=tap, sinks=(),
    )


# ------------------------------------------------------------------------------------------------ Lightning
_STATE_VERSION = 1


class LightningMonitorCallbackCore:
    """Body of ``MonitorCallback`` for ``lightning.pytorch`` and ``pytorch_lightning`` (see ``lightning.py``).

    A subclass sets ``_tensorboard_logger_types`` / ``_mlflow_logger_types`` and inherits the framework's
    ``Callback`` after this class.
    """

    _tensorboard_logger_types: Tuple[type, ...] = ()
    _mlflow_logger_types: Tuple[type, ...] = ()

    def __init__(
        self,
        config: Any = None,
        *,
        module_path: Optional[str] = None,
        output_key: Optional[str] = None,
        output_key_pos: Optional[str] = None,
        labels_key: Optional[str] = None,
        tap: Optional[str] = None,
        select: Selector = None,
        pool: Optional[str] = None,
        val_tap: Optional[str] = None,
        log_to_module: bool = True,
        use_loggers: bool = True,
        sinks: Optional[Sequence[Any]] = None,
        on_alert: Any = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if (module_path is None) == (output_key is None):
            raise ValueError(
                "Pass exactly one of `module_path=` (a submodule of the LightningModule, e.g. 'encoder') or "
                "`output_key=` (a key of the dict that `training_step` returns, e.g. 'z'); got "
                f"module_path={module_path!r}, output_key={output_key!r}."
            )
        if output_key is None and (output_key_pos is not None or labels_key is not None):
            raise ValueError(
                f"`output_key_pos={output_key_pos!r}` and `labels_key={labels_key!r}` read `training_step`'s "
                "returned dict: pass `output_key=` too (instead of `module_path=`)."
            )
        if output_key is not None and select is not None:
            raise ValueError(f"`select={select!r}` applies to `module_path=` outputs; with `output_key=` the value "
                             "under that key is used as is.")
        names, objects = split_sinks(sinks)
        if names:
            overrides["sinks"] = names
        self.config: MonitorConfig = load_config(config, **overrides)
        self.module_path = module_path
        self.output_key = output_key
        self.output_key_pos = output_key_pos
        self.labels_key = labels_key
        self.tap = tap or self.config.default_tap
        if val_tap is not None and (not val_tap or "/" in val_tap):
            raise ValueError(f"`val_tap` must be a non-empty name without '/', got {val_tap!r}.")
        if val_tap == self.tap:
            raise ValueError(f"`val_tap` must differ from the training tap {self.tap!r}, e.g. 'val_{self.tap}'.")
        self.val_tap = val_tap
        self.select = select
        self.pool = pool or self.config.pool
        self.log_to_module = bool(log_to_module)
        self.use_loggers = bool(use_loggers)
        self._user_sinks = objects
        self._on_alert = on_alert
        self.monitor: Optional[Monitor] = None
        self.val_monitor: Optional[Monitor] = None
        self._pending: Optional[Dict[str, Any]] = None
        self._handle: Any = None
        self._last_global_step: Optional[int] = None
        self._val_rows: Optional[RowCollector] = None
        self._val_open = False

    # ------------------------------------------------------------------ identity and state
    @property
    def state_key(self) -> str:
        """Checkpoint key: includes the tap, so several instances (one per tap) coexist."""
        return self._generate_state_key(tap=self.tap)  # type: ignore[attr-defined]

    def state_dict(self) -> Dict[str, Any]:
        """The Monitor's state (schedule position, alert state, alerts) and the validation Monitor's."""
        if self.monitor is None:
            return dict(self._pending or {})
        state: Dict[str, Any] = {"version": _STATE_VERSION, "monitor": self.monitor.state_dict()}
        if self.val_monitor is not None:
            state["val_monitor"] = self.val_monitor.state_dict()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (applied when the Monitor exists, i.e. now or at ``setup``)."""
        self._pending = dict(state_dict)
        if self.monitor is not None:
            self._apply_pending()

    def _apply_pending(self) -> None:
        state, self._pending = self._pending or {}, None
        if self.monitor is not None and state.get("monitor") is not None:
            self.monitor.load_state_dict(state["monitor"])
        if self.val_monitor is not None and state.get("val_monitor") is not None:
            self.val_monitor.load_state_dict(state["val_monitor"])

    # ------------------------------------------------------------------ set-up
    def _host_sinks(self, trainer: Any) -> List[Any]:
        from spherewatch.sinks import MLflowSink, TensorBoardSink

        prefix = self.config.prefix
        out: List[Any] = []
        for host in trainer.loggers:
            try:
                if isinstance(host, self._tensorboard_logger_types):
                    out.append(TensorBoardSink(writer=host.experiment, prefix=prefix))
                elif isinstance(host, self._mlflow_logger_types):
                    out.append(MLflowSink(tracking_uri=host._tracking_uri, run_id=host.run_id, prefix=prefix))
                else:
                    out.append(LoggerSink(host))
            except Exception as exc:  # never take training down for a sink
                logger.error("spherewatch: cannot log through %s (%s: %s); it is skipped.", type(host).__name__,
                             type(exc).__name__, exc)
        return out

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        previous = self.state_dict() if self.monitor is not None else None
        self._close()
        sinks = self._host_sinks(trainer) if (self.use_loggers and trainer.is_global_zero) else []
        sinks += self._user_sinks
        self.monitor = open_monitor(self.config, sinks, trainer.default_root_dir, self._on_alert)
        cfg = self.monitor.config  # with the host's folder filled in
        if self.val_tap is not None:
            self.val_monitor = Monitor(evaluation_config(cfg, self.val_tap), sinks=[MonitorSinks(self.monitor)],
                                       on_alert=self._on_alert)
            self._val_rows = RowCollector(cfg.max_samples)
        if self._pending is None and previous is not None:  # a second fit with the same callback continues
            self._pending = previous
        self._apply_pending()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.module_path is None or self.monitor is None:
            return
        from spherewatch.integrations.torch import resolve_module

        module = resolve_module(pl_module, self.module_path)
        mon = self.monitor

        def fire() -> bool:
            return mon.armed or self._val_open

        def take(output: Any, kwargs: Mapping) -> None:
            if trainer.training and mon.armed:
                try:
                    z = extract(output, kwargs, self.select, self.pool)
                except Exception as exc:
                    report_fault(mon, f"capture:{self.tap}", exc, "this batch was not recorded")
                    return
                mon.observe(z, tap=self.tap)
            elif self._val_open and trainer.validating and not self._val_rows.full:
                try:
                    z = extract(output, kwargs, self.select, self.pool)
                except Exception as exc:
                    report_fault(self.val_monitor, f"capture:{self.val_tap}", exc, "this batch was not recorded")
                    return
                self._val_rows.add(z)

        self._handle = add_output_hook(module, fire, take, mon)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_global_step = trainer.global_step

    # ------------------------------------------------------------------ training
    def _from_outputs(self, mon: Monitor, outputs: Any, tap: str, where: str):
        """``(z, z_pos, labels)`` out of a step's returned dict, or ``None`` (reported once) when absent."""
        if not isinstance(outputs, Mapping) or not isinstance(outputs.get(self.output_key), torch.Tensor):
            got = f"a dict with keys {list(outputs)}" if isinstance(outputs, Mapping) else type(outputs).__name__
            report_fault(mon, f"capture:{tap}", KeyError(
                f"`{where}` returned {got}, without a tensor under output_key={self.output_key!r}; return e.g. "
                f"`{{'loss': loss, {self.output_key!r}: z}}`"), "nothing is captured from it")
            return None
        z = outputs[self.output_key]
        z_pos = outputs.get(self.output_key_pos) if self.output_key_pos is not None else None
        labels = outputs.get(self.labels_key) if self.labels_key is not None else None
        return z, z_pos, labels

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        mon = self.monitor
        if mon is None:
            return
        if self.output_key is not None and mon.armed:
            got = self._from_outputs(mon, outputs, self.tap, "training_step")
            if got is not None:
                mon.observe(got[0], got[1], tap=self.tap, labels=got[2], pool=self.pool)
        step = int(trainer.global_step)
        if step == self._last_global_step:  # gradient accumulation: no optimizer step yet
            return
        self._last_global_step = step
        mon.step(step)
        # The Monitor decides evaluations from the step alone, the same on every rank, so the collective in
        # reduce_boolean_decision is reached by all of them, and only on evaluation steps.
        if mon.last_evaluation_step == step:
            self._publish(trainer, pl_module, mon, on_step=True)

    def _publish(self, trainer: Any, pl_module: Any, mon: Monitor, on_step: bool) -> None:
        if self.log_to_module:
            for key, value in mon.last_values.items():
                pl_module.log(key, float(value), on_step=on_step, on_epoch=not on_step, prog_bar=False,
                              logger=False, batch_size=1)
        stop = trainer.strategy.reduce_boolean_decision(bool(mon.should_stop), all=False)
        trainer.should_stop = bool(trainer.should_stop or stop)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._val_open = bool(self.val_monitor is not None and trainer.state.fn == "fit"
                              and not trainer.sanity_checking)

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._val_open or self.output_key is None or self._val_rows.full:
            return
        got = self._from_outputs(self.val_monitor, outputs, self.val_tap, "validation_step")
        if got is None:
            return
        z, labels = got[0], got[2]
        if isinstance(z, torch.Tensor) and z.ndim == 3:
            z = extract(z, None, None, self.pool)
        self._val_rows.add(z, labels if isinstance(labels, torch.Tensor) else None)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._val_open:
            return
        self._val_open = False
        vm = self.val_monitor
        z, labels = self._val_rows.take()
        if z is not None:
            vm.observe(z, tap=self.val_tap, labels=labels)
        vm.step(int(trainer.global_step))  # every rank: the Monitor gathers rows across ranks
        self._publish(trainer, pl_module, vm, on_step=False)

    # ------------------------------------------------------------------ end
    def _close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for mon in (self.val_monitor, self.monitor):  # validation first: it writes through the training sinks
            if mon is not None:
                mon.close()
        self._val_open = False

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()
