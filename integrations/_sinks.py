"""Where the adapters log: the host's own writers and runs, wrapped as spherewatch sinks, and the Monitor that
writes to them. Nothing here imports a training framework (the sinks import their backends when built)."""
from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, List, Optional, Sequence, Tuple

from spherewatch.config import MonitorConfig, load_config
from spherewatch.delivery.registry import build_sink
from spherewatch.monitor import Monitor
from spherewatch.sinks.base import Sink
from spherewatch.sinks.mlflow_run import active_run

__all__ = ["LoggerSink", "calling_callbacks", "hf_host_sinks", "lightning_host_sinks", "open_monitor", "split_sinks"]

logger = logging.getLogger("spherewatch.integrations")


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
    have no common logger API and are left to the Monitor's other sinks and alert channels.

    The sink runs on the writer thread while Lightning calls the same logger's ``log_metrics`` and ``save`` on the
    training thread, and loggers are not thread-safe (CSVLogger's ``save`` writes its pending rows, then clears them:
    two saves at once write a row twice, a row appended in between is lost). So the sink serialises both methods of
    this logger, Lightning's calls included, with one lock it installs on the logger (and removes at close); a
    training-thread call waits at most for one ``log_metrics`` or ``save`` of the writer's.
    """

    def __init__(self, host_logger: Any) -> None:
        super().__init__()
        self.logger = host_logger
        self.name = "lightning_" + type(host_logger).__name__.lower()
        self._installed = _serialise(host_logger)

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

    def close(self) -> None:
        try:
            super().close()
        finally:
            for name in self._installed:  # the logger's own methods again
                self.logger.__dict__.pop(name, None)
            self._installed = ()


_SERIALISED = ("log_metrics", "save")


def _serialise(host: Any) -> Tuple[str, ...]:
    """Wrap ``host.log_metrics`` and ``host.save`` (instance attributes over the class's methods) in one re-entrant
    lock; returns the names installed (none when the logger does not allow it, or already has them)."""
    if getattr(host, "_spherewatch_lock", None) is not None:
        return ()
    lock = threading.RLock()
    installed = []
    try:
        host._spherewatch_lock = lock
        for name in _SERIALISED:
            method = getattr(host, name, None)
            if not callable(method):
                continue

            def guarded(*args: Any, __method: Any = method, **kwargs: Any) -> Any:
                with lock:
                    return __method(*args, **kwargs)

            setattr(host, name, guarded)
            installed.append(name)
        installed.append("_spherewatch_lock")
    except (AttributeError, TypeError):  # __slots__ or a frozen object: unserialised, as before
        logger.debug("spherewatch: cannot serialise %s's logging calls", type(host).__name__)
    return tuple(installed)


def _guarded(what: str, build: Any, out: List[Any]) -> None:
    try:
        out.append(build())
    except Exception as exc:  # never take training down for a sink
        logger.error("spherewatch: cannot log through %s (%s: %s); it is skipped.", what, type(exc).__name__, exc)


def lightning_host_sinks(loggers: Sequence[Any], tensorboard_types: tuple, mlflow_types: tuple, prefix: str,
                         alert_channels: Sequence[str] = ()) -> List[Any]:
    """A sink for each of a Lightning trainer's loggers: its TensorBoard writer, its MLflow run (no second run), its
    W&B run (``WandbLogger.experiment``, no second run), or its ``log_metrics``."""
    from spherewatch.sinks import TensorBoardSink

    out: List[Any] = []
    for host in loggers:
        if type(host).__name__ == "WandbLogger":  # lightning's and pytorch_lightning's: its run, found by name
            _guarded(type(host).__name__, lambda h=host: _wandb_sink(h.experiment, prefix, alert_channels), out)
        elif isinstance(host, tensorboard_types):
            _guarded(type(host).__name__, lambda h=host: TensorBoardSink(writer=h.experiment, prefix=prefix), out)
        elif isinstance(host, mlflow_types):  # the logger's run (never a second one), on its store
            _guarded(type(host).__name__, lambda h=host: build_sink(
                {"name": "mlflow", "tracking_uri": h._tracking_uri, "run_id": h.run_id, "prefix": prefix}), out)
        else:
            out.append(LoggerSink(host))
    return out


def _wandb_sink(run: Any, prefix: str, alert_channels: Sequence[str]) -> Any:
    from spherewatch.sinks.wandb import WandbSink

    return WandbSink(run, prefix=prefix, alerts="wandb" in tuple(alert_channels or ()))


def calling_callbacks(callback: Any, max_frames: int = 8) -> List[Any]:
    """The HF Trainer's callbacks, read from the ``CallbackHandler`` that is calling ``callback`` now (a callback
    is never handed the Trainer or the other callbacks)."""
    frame = inspect.currentframe()
    try:
        caller = frame.f_back if frame is not None else None
        for _ in range(max_frames):
            if caller is None:
                break
            callbacks = getattr(caller.f_locals.get("self"), "callbacks", None)
            if isinstance(callbacks, list) and any(cb is callback for cb in callbacks):
                return list(callbacks)
            caller = caller.f_back
        return []
    finally:
        del frame
        caller = None


def hf_host_sinks(callbacks: Sequence[Any], args: Any, prefix: str, alert_channels: Sequence[str] = ()) -> List[Any]:
    """The HF Trainer's own writers: the ``TensorBoardCallback``'s ``tb_writer``, the active MLflow run of its
    ``MLflowCallback`` and the W&B run of its ``WandbCallback`` (never a second run), as ``args.report_to`` asks."""
    from spherewatch.sinks import TensorBoardSink

    report_to = getattr(args, "report_to", None) or []
    report_to = [str(r).lower() for r in ([report_to] if isinstance(report_to, str) else report_to)]
    output_dir = args.output_dir
    out: List[Any] = []
    writer = next((cb.tb_writer for cb in callbacks if type(cb).__name__ == "TensorBoardCallback"
                   and getattr(cb, "tb_writer", None) is not None), None)
    if writer is not None:
        _guarded("TensorBoard", lambda: TensorBoardSink(writer=writer, prefix=prefix), out)
    elif "tensorboard" in report_to:
        log_dir = os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(output_dir, "runs", "spherewatch")
        logger.warning("spherewatch: HF's TensorBoard writer was not found; writing to %s instead.", log_dir)
        _guarded("TensorBoard", lambda: build_sink({"name": "tensorboard", "log_dir": log_dir, "prefix": prefix}), out)
    if "mlflow" in report_to:
        _guarded("MLflow", lambda: _hf_mlflow_sink(prefix), out)
    if "wandb" in report_to:
        _guarded("W&B", lambda: _hf_wandb_sink(callbacks, prefix, alert_channels), out)
    return [s for s in out if s is not None]


def _hf_wandb_sink(callbacks: Sequence[Any], prefix: str, alert_channels: Sequence[str]) -> Any:
    """The run HF's ``WandbCallback`` started (its ``_wandb.run``, else the active ``wandb.run``)."""
    from spherewatch.sinks.wandb import active_run

    host = next((cb for cb in callbacks if type(cb).__name__ == "WandbCallback"), None)
    run = getattr(getattr(host, "_wandb", None), "run", None) or active_run()
    if run is None:
        logger.warning("spherewatch: report_to has 'wandb' but no W&B run is active (WANDB_DISABLED?); not logging "
                       "to W&B.")
        return None
    return _wandb_sink(run, prefix, alert_channels)


def _hf_mlflow_sink(prefix: str) -> Any:
    active = active_run(load=True)  # the run HF's MLflowCallback started, on this (the training) thread
    if active is None:
        logger.warning("spherewatch: report_to has 'mlflow' but no MLflow run is active "
                       "(DISABLE_MLFLOW_INTEGRATION?); not logging to MLflow.")
        return None
    run_id, tracking_uri = active
    return build_sink({"name": "mlflow", "tracking_uri": tracking_uri, "run_id": run_id, "prefix": prefix})


def open_monitor(config: MonitorConfig, sinks: List[Any], default_root: str, on_alert: Any) -> Monitor:
    """The adapters' Monitor: writes to ``sinks`` (the host's loggers and the user's sink objects); with neither and
    no sink or folder configured, to JSONL under ``<default_root>/spherewatch`` instead of the working directory."""
    if not sinks and config.sinks is None and not ({"log_dir", "jsonl_path"} & config.model_fields_set):
        config = load_config(config, log_dir=os.path.join(str(default_root), "spherewatch"))
    return Monitor(config, sinks=sinks or None, on_alert=on_alert)
