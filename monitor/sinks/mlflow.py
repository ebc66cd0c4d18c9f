"""Stream metrics and alerts to an MLflow run (the given run, the host's active run, or a new one)."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from spherewatch.sinks.base import Sink, as_float_array
from spherewatch.sinks.jsonl import encode_float

if TYPE_CHECKING:
    from spherewatch.alerts.alert import Alert

__all__ = ["ALERTS_ARTIFACT", "ALERT_STATE_TAG", "DEFAULT_TRACKING_URI", "RUN_KEY_TAG", "SPECTRA_ARTIFACT", "MLflowSink",
           "check_tracking_uri"]

#: URI schemes MLflow's tracking client accepts (``postgresql+psycopg2`` and the like count as ``postgresql``).
TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc",
                    "uc")

logger = logging.getLogger("spherewatch.sinks")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ALERTS_ARTIFACT = "spherewatch/alerts.json"
SPECTRA_ARTIFACT = "spherewatch/spectra.json"
ALERT_STATE_TAG = "spherewatch.alert_state"
#: tag naming the Monitor run a run belongs to: a resumed run and a replay of a crashed run's spool find it by it
RUN_KEY_TAG = "spherewatch.run_key"
_MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
# MLflow error codes that mean "this record is malformed": retrying it can never succeed.
_PERMANENT_ERROR_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST"})


def redact_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` replaced by ``***@`` (safe for logs and reprs).

    Example:
        >>> redact_uri("https://bob:s3cret@mlflow.example.com/path")
        'https://***@mlflow.example.com/path'
    """
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def check_tracking_uri(uri: str | None) -> None:
    """Fail fast, without any network I/O, on a tracking URI MLflow cannot use (a typo in the scheme).

    Raises:
        ValueError: the scheme is not one of :data:`TRACKING_SCHEMES` (the message hides credentials).

    Example:
        >>> check_tracking_uri("http://127.0.0.1:5000")
        >>> try:
        ...     check_tracking_uri("htp://u:p@host")
        ... except ValueError as err:
        ...     print(str(err)[-40:])
        (or a local path), got 'htp://***@host'.
    """
    if uri is None:
        return
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"Expected `tracking_uri` to be a non-empty string, got {type(uri).__name__}.")
    scheme, sep, _ = uri.partition("://")
    if not sep and ":" in uri and not os.path.isabs(uri):
        scheme, sep = uri.partition(":")[0], ":"  # databricks:/profile, file:relative
    if not sep:
        return  # a local path: MLflow's file store
    if scheme.lower().split("+")[0] not in TRACKING_SCHEMES:
        raise ValueError(
            f"Expected an MLflow tracking URI with one of the schemes {', '.join(TRACKING_SCHEMES)} (or a local path), "
            f"got {redact_uri(uri)!r}."
        )


def _same_uri(a: str, b: str) -> bool:
    """Whether two tracking URIs name the same store (``sqlite:///x.db`` vs its absolute form)."""
    def norm(uri: str) -> str:
        if uri.startswith("sqlite:///"):
            return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
        return uri.rstrip("/")

    return norm(a) == norm(b)


def _default_tracking_uri() -> str:
    """The URI the user configured (``MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``), else SQLite."""
    import mlflow

    try:
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set
    except ImportError:  # pragma: no cover - private helper moved
        is_set = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    else:
        is_set = is_tracking_uri_set()
    return mlflow.get_tracking_uri() if is_set else DEFAULT_TRACKING_URI


class MLflowSink(Sink):
    """Log metrics and alerts to an MLflow run through ``MlflowClient`` (one ``log_batch`` per call).

    Run resolution, in order:

    1. ``run_id`` given: log to that run (on ``tracking_uri``, else MLflow's current tracking URI);
    2. an active run (``mlflow.active_run()``, e.g. started by the host's training script): log to it,
       on MLflow's current tracking URI — never open a second run beside it;
    3. otherwise create a new run in ``experiment_name`` (created when missing) on ``tracking_uri``,
       else the URI configured through ``MLFLOW_TRACKING_URI``/``mlflow.set_tracking_uri``, else
       ``sqlite:///mlflow.db``.

    Only a run this sink created is ended by :meth:`close` (status ``FINISHED``); the others stay open
    for their owner.

    What goes where:

    * scalars: metrics with the keys as given (MLflow accepts ``/`` in keys), one ``log_batch`` per
      :meth:`log_scalars` call, timestamped with ``wall_time``;
    * histograms: MLflow has no histogram type, so the latest spectrum per key is kept and written as
      the JSON artifact ``spherewatch/spectra.json`` (``{key: {"step", "time", "values"}}``) on
      :meth:`close` and on :meth:`flush` when a spectrum changed and the last write is at least
      ``artifact_interval`` seconds old (the Monitor flushes after every sampling step);
    * alerts: the tag ``spherewatch.alert_state`` = severity of the latest alert, the metric
      ``<prefix>/alerts/count`` = cumulative number of alerts, at the alert's step, and the JSON
      artifact ``spherewatch/alerts.json`` (list of all alerts so far, written by :meth:`flush` at most once
      per ``artifact_interval`` and by :meth:`close`, not once per alert).

    Non-finite values: metrics go to MLflow as they are (it stores NaN and clips +/-inf); in the JSON
    artifacts they are written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

    Re-sending a record (as :class:`~spherewatch.sinks.ResilientSink` does after an outage) adds no
    duplicate points: with the same ``wall_time`` the metric rows are identical and MLflow keeps one, and
    an alert already seen is not counted twice.

    Over HTTP the MLflow client retries failed requests itself (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
    ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``; by default for minutes while a server is
    down). Inside a Monitor that wait is on its writer thread, never on the training thread, so the defaults are
    fine; a sink used directly blocks its caller for that long.

    Args:
        tracking_uri: tracking server or store URI (``http://...``, ``sqlite:///...``).
        run_id: log to this existing run.
        experiment_name: experiment of a new run (default ``"spherewatch"``).
        run_name: name of a new run.
        tags: tags set on the run (whichever run is used).
        prefix: key prefix (for the alert-count metric).
        artifact_location: artifact location of the experiment when this sink creates it.
        artifact_interval: minimum seconds between two writes of ``spherewatch/spectra.json`` and
            ``spherewatch/alerts.json`` by :meth:`flush`.
        run_key: the Monitor run this sink belongs to: set as the tag ``spherewatch.run_key`` on a run it creates.
        find_run: before creating a run, look for one tagged with ``run_key`` in the experiment and log to it (a
            resumed run, or the replay of a crashed run's spool, goes back into its own run).

    Threads: the Monitor calls a sink from its one writer thread. ``MlflowClient`` calls with an explicit
    ``run_id`` are safe from any thread (no fluent, thread-local active-run state is used after construction);
    the host's active run is looked up by the caller, on the training thread, and passed as ``run_id``.

    Raises:
        ModuleNotFoundError: mlflow is not installed.
        ValueError: the experiment exists but is deleted.

    Example::

        sink = MLflowSink("sqlite:///mlflow.db", experiment_name="simclr")
        sink.log_scalars(100, {"spherewatch/embeddings/uniformity": -3.41})
        sink.close()  # ends the run it created
    """

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        run_id: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        prefix: str = "spherewatch",
        artifact_location: str | None = None,
        artifact_interval: float = 60.0,
        run_key: str | None = None,
        find_run: bool = False,
    ) -> None:
        super().__init__()
        try:
            import mlflow
            from mlflow import MlflowClient
            from mlflow.entities import Metric, RunTag
        except ImportError as err:
            raise ModuleNotFoundError("MLflowSink needs `mlflow`: pip install 'spherewatch[mlflow]'.") from err
        self._Metric = Metric
        self._RunTag = RunTag
        self.prefix = prefix.rstrip("/")
        self._alerts: list[Alert] = []
        self._alert_ids: dict[tuple[Any, ...], int] = {}
        self._alerts_dirty = False
        self._alerts_written_at = -math.inf
        self.run_key = run_key
        self._spectra: dict[str, dict[str, Any]] = {}
        self._spectra_dirty = False
        self._spectra_written_at = -math.inf
        self.artifact_interval = float(artifact_interval)

        active = mlflow.active_run() if run_id is None else None
        if run_id is not None:
            self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
            self._client = MlflowClient(self.tracking_uri)
            self.run_id = str(run_id)
            self.created_run = False
        elif active is not None:
            current = mlflow.get_tracking_uri()
            if tracking_uri and not _same_uri(tracking_uri, current):
                logger.warning(
                    "MLflowSink: an MLflow run is active (%s on %s); logging to it instead of opening a "
                    "second run, and ignoring tracking_uri=%r.",
                    active.info.run_id, redact_uri(current), redact_uri(tracking_uri),
                )
            self.tracking_uri = current
            self._client = MlflowClient(current)
            self.run_id = active.info.run_id
            self.created_run = False
        else:
            self.tracking_uri = tracking_uri or _default_tracking_uri()
            self._client = MlflowClient(self.tracking_uri)
            experiment_id = self._experiment_id(experiment_name or "spherewatch", artifact_location)
            found = self._find_run(experiment_id, run_key) if (find_run and run_key) else None
            if found is not None:
                self.run_id = found
                self._client.update_run(found, status="RUNNING")
                logger.info("MLflowSink: continuing run %s (spherewatch run %s) on %s.", found, run_key,
                            redact_uri(self.tracking_uri))
            else:
                run_tags = {str(k): str(v) for k, v in (tags or {}).items()}
                if run_key:
                    run_tags[RUN_KEY_TAG] = str(run_key)
                run = self._client.create_run(experiment_id, run_name=run_name, tags=run_tags)
                self.run_id = run.info.run_id
                logger.info("MLflowSink: created run %s in experiment %r on %s.", self.run_id,
                            experiment_name or "spherewatch", redact_uri(self.tracking_uri))
            self.created_run = True
        if tags and not self.created_run:
            self._client.log_batch(
                self.run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()], synchronous=True
            )

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self._client.create_experiment(name, artifact_location=artifact_location)
            except Exception:  # created concurrently by another process: use theirs
                experiment = self._client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise ValueError(
                f"MLflow experiment {name!r} (id {experiment.experiment_id}) on {redact_uri(self.tracking_uri)} "
                f"is deleted; restore it (`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or pass "
                "another experiment_name."
            )
        return experiment.experiment_id

    def _find_run(self, experiment_id: str, run_key: str) -> str | None:
        runs = self._client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
                                        max_results=1)
        return runs[0].info.run_id if runs else None

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` in use."""
        return self._client

    def _log_metrics(self, metrics: list[Any], tags: tuple[Any, ...] = ()) -> None:
        for start in range(0, max(len(metrics), 1), _MAX_METRICS_PER_BATCH):
            chunk = metrics[start:start + _MAX_METRICS_PER_BATCH]
            self._client.log_batch(self.run_id, metrics=chunk, tags=list(tags) if start == 0 else [],
                                   synchronous=True)

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """One ``log_batch`` with every key (chunks of 1000 metrics beyond that)."""
        self._check_open()
        timestamp = round((time.time() if wall_time is None else float(wall_time)) * 1000)
        metrics = [self._Metric(str(k), float(v), timestamp, int(step)) for k, v in scalars.items()]
        if metrics:
            self._log_metrics(metrics)

    #: most metrics in one ``log_batch`` (MLflow's limit)
    batch_limit = _MAX_METRICS_PER_BATCH

    def log_scalars_batch(self, records: list[tuple[int, Mapping[str, float], float | None]]) -> None:
        """Several steps' scalars ``[(step, values, wall_time), ...]`` in as few ``log_batch`` calls as MLflow allows
        (a replayed backlog: one request per 1000 metrics instead of one per step)."""
        self._check_open()
        metrics = []
        for step, scalars, wall_time in records:
            timestamp = round((time.time() if wall_time is None else float(wall_time)) * 1000)
            metrics += [self._Metric(str(k), float(v), timestamp, int(step)) for k, v in scalars.items()]
        if metrics:
            self._log_metrics(metrics)

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: float | None = None) -> None:
        """Keep the latest spectrum of ``key``; written to ``spherewatch/spectra.json`` on flush/close."""
        self._check_open()
        arr = as_float_array(values)
        self._spectra[str(key)] = {
            "step": int(step),
            "time": time.time() if wall_time is None else float(wall_time),
            "values": [encode_float(v) for v in arr.tolist()],
        }
        self._spectra_dirty = True

    def log_alert(self, alert: Alert) -> None:
        """Set the alert-state tag, log the cumulative alert count; ``spherewatch/alerts.json`` is rewritten by
        :meth:`flush` (at most once per ``artifact_interval``) and :meth:`close`, not once per alert."""
        self._check_open()
        alert_id = (alert.rule, alert.key, alert.step, alert.time, alert.severity)
        if alert_id not in self._alert_ids:
            self._alerts.append(alert)
            self._alert_ids[alert_id] = len(self._alerts)
        count = self._alert_ids[alert_id]
        metric = self._Metric(f"{self.prefix}/alerts/count", float(count), round(alert.time * 1000),
                              int(alert.step))
        tag = self._RunTag(ALERT_STATE_TAG, str(self._alerts[-1].severity))
        self._log_metrics([metric], tags=(tag,))
        self._alerts_dirty = True

    def _write_alerts(self) -> None:
        if not self._alerts_dirty:
            return
        records = []
        for a in self._alerts:
            d = a.to_dict()
            d["value"] = encode_float(d["value"])
            records.append(d)
        self._client.log_text(self.run_id, json.dumps(records, indent=1, allow_nan=False), ALERTS_ARTIFACT)
        self._alerts_dirty = False
        self._alerts_written_at = time.monotonic()

    @property
    def alerts(self) -> list[Alert]:
        """Alerts logged so far (a copy)."""
        return list(self._alerts)

    def flush(self) -> None:
        """Write ``spherewatch/spectra.json`` / ``alerts.json`` if they changed and ``artifact_interval`` has passed."""
        if self._closed:
            return
        if time.monotonic() - self._spectra_written_at >= self.artifact_interval:
            self._write_spectra()
        if time.monotonic() - self._alerts_written_at >= self.artifact_interval:
            self._write_alerts()

    def _write_spectra(self) -> None:
        if self._spectra_dirty:
            self._client.log_text(self.run_id, json.dumps(self._spectra, allow_nan=False), SPECTRA_ARTIFACT)
            self._spectra_dirty = False
            self._spectra_written_at = time.monotonic()

    def close(self) -> None:
        """Flush; end the run (``FINISHED``) only if this sink created it. Idempotent."""
        if self._closed:
            return
        self._write_spectra()
        self._write_alerts()
        if self.created_run:
            self._client.set_terminated(self.run_id, status="FINISHED")
        self._closed = True

    def is_permanent_error(self, exc: BaseException) -> bool:
        """Malformed records (MLflow ``INVALID_PARAMETER_VALUE``) and ``ValueError``/``TypeError`` are
        permanent; connection errors, timeouts and server errors are transient."""
        code = getattr(exc, "error_code", None)
        if code is not None:
            return code in _PERMANENT_ERROR_CODES
        return super().is_permanent_error(exc)

    def __repr__(self) -> str:
        return (
            f"MLflowSink(run_id={self.run_id!r}, tracking_uri={redact_uri(self.tracking_uri)!r}, "
            f"created_run={self.created_run}, closed={self._closed})"
        )
