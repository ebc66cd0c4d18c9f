"""Where records go: the sinks, opened on rank zero at the first write, each behind a spooling
:class:`~spherewatch.sinks.ResilientSink`."""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from spherewatch import distributed as dist_utils
from spherewatch.alerts.alert import Alert

__all__ = ["RecordWriter", "split_sink_args"]

logger = logging.getLogger("spherewatch")

_SINK_METHODS = ("log_scalars", "log_histogram", "log_alert", "flush", "close")


def split_sink_args(sinks: Optional[Sequence[Any]], overrides: Dict[str, Any]) -> List[Any]:
    """Sink names go to the ``sinks`` config field; sink objects are checked and returned."""
    if sinks is None:
        return []
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
    return objects


class RecordWriter:
    """Writes each evaluation's scalars, histograms and alerts to every sink (rank zero only).

    Args:
        config: the Monitor's config (``sinks``, paths, MLflow settings, ``strict``).
        extra_sinks: sink objects handed over by the user or an adapter (the host's writer or run).
        faults: where sink failures are reported.
    """

    def __init__(self, config: Any, extra_sinks: Sequence[Any], faults: Any) -> None:
        self.config = config
        self._extra = list(extra_sinks)
        self._faults = faults
        self._sinks: Optional[List[Any]] = None  # opened lazily, on rank zero, at the first write
        self._closed = False
        self._config_logged = False  # the configuration is logged as run parameters with the first write

    def _open(self) -> List[Any]:
        from spherewatch.sinks import JsonlSink, MemorySink, MLflowSink, ResilientSink, TensorBoardSink

        cfg = self.config
        names = cfg.sinks if cfg.sinks is not None else (() if self._extra else ("jsonl",))
        spool_dir = cfg.spool_dir or os.path.join(cfg.log_dir, "spool")
        opened: List[Any] = []
        for name in names:
            try:
                if name == "tensorboard":
                    sink = TensorBoardSink(cfg.log_dir, prefix=cfg.prefix)
                elif name == "mlflow":
                    sink = MLflowSink(cfg.tracking_uri, run_id=cfg.run_id, experiment_name=cfg.experiment_name,
                                      run_name=cfg.run_name, prefix=cfg.prefix)
                    sink.report_artifacts = True  # the report's HTML and PNGs as artifacts at close()
                elif name == "jsonl":
                    sink = JsonlSink(cfg.resolved_jsonl_path)
                else:
                    sink = MemorySink()
            except Exception as exc:
                self._faults.report(f"sink:{name}", exc, "this sink is disabled")
                continue
            opened.append(sink)
        opened += self._extra
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
        self._faults.report(f"sink:{name}", exc, "its points are spooled and replayed when it recovers")

    def _opened(self) -> List[Any]:
        if self._sinks is None:
            try:
                self._sinks = self._open()
            except Exception as exc:
                self._faults.report("sinks", exc, "nothing is written")
                self._sinks = []
        return self._sinks

    @property
    def sinks(self) -> List[Any]:
        """The sinks written to (the inner sink of each resilient wrapper), opened on first use; none off rank 0."""
        if dist_utils.rank() != 0:
            return []
        if self._sinks is None:
            self._sinks = self._open()
        return [getattr(s, "inner", s) for s in self._sinks]

    def sink(self, name: str) -> Any:
        """The first sink whose ``name`` is ``name`` (e.g. ``"memory"``)."""
        for s in self.sinks:
            if getattr(s, "name", None) == name:
                return s
        raise KeyError(f"No {name!r} sink; open ones: {[getattr(s, 'name', type(s).__name__) for s in self.sinks]}.")

    def submit_params(self, params: Dict[str, Any]) -> None:
        """Run parameters to every sink that keeps them (``log_params``), rank zero only."""
        if dist_utils.rank() != 0 or self._closed:
            return
        for sink in self._opened():
            fn = getattr(getattr(sink, "inner", sink), "log_params", None)
            if not callable(fn):
                continue
            try:
                fn(dict(params))
            except Exception as exc:
                self._faults.report(f"sink:{getattr(sink, 'name', '?')}", exc, "its parameters were not logged")

    def submit(self, step: int, values: Dict[str, float], hists: Dict[str, List[float]], alerts: Sequence[Alert]) -> None:
        """Write one evaluation's records (rank zero only); the configuration goes out as run parameters first."""
        if dist_utils.rank() != 0 or self._closed:
            return
        if not self._config_logged:
            from spherewatch.keys import config_params

            self._config_logged = True
            self.submit_params(config_params(self.config))
        for sink in self._opened():
            try:
                sink.log_scalars(step, values)
                for k, v in hists.items():
                    if any(math.isfinite(x) for x in v):  # an all-NaN spectrum is reported by the nonfinite rule
                        sink.log_histogram(step, k, v)
                for a in alerts:
                    sink.log_alert(a)
                sink.flush()
            except Exception as exc:  # ResilientSink only raises under strict
                self._faults.report(f"sink:{getattr(sink, 'name', '?')}", exc)

    def flush(self) -> None:
        for sink in self._sinks or []:
            try:
                sink.flush()
            except Exception as exc:
                self._faults.report(f"sink:{getattr(sink, 'name', '?')}", exc)

    def close(self, timeout: Optional[float] = None) -> None:
        """Flush and close every sink. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for sink in self._sinks or []:
            try:
                sink.close()
            except Exception as exc:
                self._faults.report(f"sink:{getattr(sink, 'name', '?')}", exc, "it may not have flushed")
