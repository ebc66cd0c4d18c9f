"""Stream metrics, spectra and alerts to a trackio run (Hugging Face's local-first tracker, SQLite underneath).

``trackio`` is imported when the sink is built, never by ``import spherewatch``. trackio keeps its current run in a
context variable (one per thread): the host's run is looked up on the training thread (:func:`host_run_token`, when
the Monitor decides its sinks) and handed to the sink built on the writer thread.
"""
from __future__ import annotations

import inspect
import math
import sys
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from spherewatch.errors import SpherewatchError
from spherewatch.keys import alert_count_key, order_keys, param_field
from spherewatch.sinks.alert_records import LEVELS, SeenAlerts, alert_facts, alert_text, alert_title
from spherewatch.sinks.base import Sink, as_float_array

if TYPE_CHECKING:
    from spherewatch.alerts.alert import Alert

__all__ = ["TrackioSink", "active_run", "host_run_token"]

_HOST_RUNS: dict[str, Any] = {}
_HOST_LOCK = threading.Lock()


def active_run() -> Any:
    """trackio's current run on this thread (``None`` when trackio is not imported or no run is active)."""
    trackio = sys.modules.get("trackio")
    if trackio is None:
        return None
    try:
        from trackio import context_vars

        return context_vars.current_run.get()
    except Exception:  # noqa: BLE001 - another trackio layout: no host run found
        return None


def host_run_token() -> str | None:
    """A token for the host's current trackio run (looked up on this, the training, thread), for the spec."""
    run = active_run()
    if run is None:
        return None
    token = uuid.uuid4().hex
    with _HOST_LOCK:
        _HOST_RUNS[token] = run
    return token


class TrackioSink(Sink):
    """Log metrics, spectra and alerts into a trackio run: ``run`` given, else the host's run (``host_token``),
    else a run this sink opens with ``trackio.init(project=...)`` and finishes at :meth:`close`.

    * one ``run.log(row, step=step)`` per evaluation (trackio keeps the step with each row, so several loggers never
      fight over it): the scalars, ``<prefix>/alerts/count`` and each spectrum as a ``trackio.Histogram``;
    * with ``alerts=True`` (the alert channel ``"trackio"``): each newly fired alert (not a resolution, not a
      reminder of an alert still open) is one ``run.alert(title, text, level, step)``. trackio has no
      ``wait_duration``: a persisting condition is one alert because spherewatch sends only the first event of each
      episode (the de-duplication is spherewatch's, not the server's);
    * trackio has no run summary and takes its config only at ``init``: a run this sink opens gets the Monitor's
      configuration there; a host's run does not.
    """

    name = "trackio"
    supports_params = True

    def __init__(self, run: Any = None, *, project: str | None = None, run_name: str | None = None,
                 prefix: str = "spherewatch", alerts: bool = False, host_token: str | None = None) -> None:
        super().__init__()
        try:
            import trackio
        except ImportError as err:
            raise ModuleNotFoundError("TrackioSink needs `trackio`: pip install 'spherewatch[trackio]'.") from err
        self._trackio = trackio
        self.prefix = prefix.rstrip("/")
        self.alerts_enabled = bool(alerts)
        if run is None and host_token is not None:
            with _HOST_LOCK:
                run = _HOST_RUNS.pop(host_token, None)
        if run is None:
            run = active_run()
        self._project, self._run_name = project or "spherewatch", run_name
        self.run, self.created_run = run, False
        self._params: dict[str, Any] = {}
        self._pending: dict[str, Any] | None = None
        self._pending_step: int | None = None
        self._fired = 0
        self._alert_ids = SeenAlerts()  # delivered
        self._counted = SeenAlerts()  # in the alert count

    def _ensure_run(self) -> Any:
        if self.run is None:  # opened at the first write, so that the Monitor's configuration goes into init
            config = {self.prefix: {param_field(k) or k: v for k, v in self._params.items()}} if self._params else None
            kwargs = {"project": self._project, "name": self._run_name, "config": config, "auto_log_cpu": False,
                      "auto_log_gpu": False}
            try:  # older trackio: fewer keywords (no automatic system metrics to turn off)
                accepted = inspect.signature(self._trackio.init).parameters
                kwargs = {k: v for k, v in kwargs.items() if k in accepted}
            except (TypeError, ValueError):
                pass
            self.run = self._trackio.init(**kwargs)
            self.created_run = True
        return self.run

    def _send_pending(self) -> None:
        if self._pending is None:
            return
        self._ensure_run().log(self._pending, step=self._pending_step)
        self._pending, self._pending_step = None, None

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        self._check_open()
        values = {str(k): float(v) for k, v in scalars.items()}
        if self._pending is not None and self._pending_step != int(step):
            self._send_pending()
        row = self._pending if self._pending is not None else {}
        for key in order_keys(values, self.prefix):
            row[key] = values[key]
        if any(k.startswith(self.prefix + "/") for k in values):
            row[alert_count_key(self.prefix)] = self._fired
        self._pending, self._pending_step = row, int(step)

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: float | None = None) -> None:
        self._check_open()
        arr = as_float_array(values)
        finite = [v for v in arr.tolist() if math.isfinite(v)]
        if not finite:
            return
        if self._pending is not None and self._pending_step != int(step):
            self._send_pending()
        if self._pending is None:
            self._pending, self._pending_step = {}, int(step)
        histogram = getattr(self._trackio, "Histogram", None)
        if histogram is None:  # trackio before histograms: the spectrum stays in the other sinks
            return
        self._pending[str(key)] = histogram(finite, num_bins=max(1, min(64, len(finite))))

    def log_alert(self, alert: Alert) -> None:
        self._check_open()
        facts = alert_facts(alert)
        if facts.id in self._alert_ids:
            return
        # counted once, even when run.alert below fails and the alert is retried
        if self._counted.add(facts.id) and facts.counted and facts.new_episode:
            self._fired += 1
            if self._pending is not None and self._pending_step == int(alert.step):
                self._pending[alert_count_key(self.prefix)] = self._fired
        if self.alerts_enabled and not facts.resolved and (facts.new_episode or facts.fault):
            run = self._ensure_run()
            if not callable(getattr(run, "alert", None)) or not hasattr(self._trackio, "AlertLevel"):
                raise SpherewatchError("the alert channel 'trackio' needs a trackio with trackio.alert: "
                                       "pip install -U trackio")
            level = getattr(self._trackio.AlertLevel, LEVELS.get(str(alert.severity), "WARN"))
            run.alert(title=alert_title(alert, self.prefix), text=alert_text(alert), level=level, step=int(alert.step))
        self._alert_ids.add(facts.id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._check_open()
        self._params.update({str(k): v for k, v in params.items()})

    def flush(self) -> None:
        if not self._closed:
            self._send_pending()

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        if self.created_run and self.run is not None:
            self.run.finish()
        self._closed = True

    def __repr__(self) -> str:
        return f"TrackioSink(project={getattr(self.run, 'project', self._project)!r}, created_run={self.created_run})"
