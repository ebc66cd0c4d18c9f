"""Stream metrics and alerts to an MLflow run (the given run, the host's active run, or a new one)."""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from spherewatch.alerts.verdict import OK, collapse_alerts, worst_severity
from spherewatch.delivery.record import alert_to_json, encode_float
from spherewatch.keys import alert_count_key, order_keys, parse_key
from spherewatch.sinks.alert_records import KEEP_ALERT_IDS, SeenAlerts, alert_facts
from spherewatch.sinks.base import Sink, as_float_array
from spherewatch.sinks.mlflow_run import (
    DEFAULT_TRACKING_URI,
    RUN_KEY_TAG,
    TRACKING_SCHEMES,
    active_run,
    check_tracking_uri,
    default_tracking_uri,
    mark_training_experiment,
    open_run,
    redact_uri,
)

if TYPE_CHECKING:
    from spherewatch.alerts.alert import Alert

__all__ = [
    "ALERTS_ARTIFACT", "ALERT_STATE_TAG", "DEFAULT_TRACKING_URI", "FIRST_ALERT_STEP_TAG", "PARAM_PREFIX",
    "REPORT_ARTIFACT_DIR", "RUN_KEY_TAG", "SPECTRA_ARTIFACT", "SPECTRA_HISTORY_ARTIFACT", "WORST_SEVERITY_TAG",
    "TRACKING_SCHEMES", "MLflowSink", "check_tracking_uri", "redact_uri",
]

logger = logging.getLogger("spherewatch.sinks")

ALERTS_ARTIFACT = "spherewatch/alerts.json"
#: Sealed parts of the alert list, written once each: ``spherewatch/alerts-<sink start>-<part>.json`` (JSON lists, in
#: name order before ``alerts.json``, which holds the newest, open part).
ALERTS_PART_PREFIX = "spherewatch/alerts-"
#: Alerts per part: ``alerts.json`` is rewritten with at most this many; a full part is sealed into its own artifact.
ALERTS_PER_PART = 1000
#: Alerts the sink keeps as objects (:attr:`MLflowSink.alerts`, the verdict): the first ones; the rest are on the
#: server only. Alert ids remembered to drop a redelivered duplicate: the latest ones.
KEEP_ALERTS = 1000
SPECTRA_ARTIFACT = "spherewatch/spectra.json"
SPECTRA_HISTORY_ARTIFACT = "spherewatch/spectra_history.json"
REPORT_ARTIFACT_DIR = "spherewatch/report"
ALERT_STATE_TAG = "spherewatch.alert_state"
WORST_SEVERITY_TAG = "spherewatch.worst_severity"
FIRST_ALERT_STEP_TAG = "spherewatch.first_alert_step"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
PARAM_PREFIX = "spherewatch."
_MAX_SPECTRA_PER_KEY = 512  # the history is thinned (every other one dropped) beyond this
_MAX_PARAM_LENGTH = 500  # MLflow's historical limit on a param value
_MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
# MLflow error codes that mean "this record is malformed": retrying it can never succeed.
_PERMANENT_ERROR_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST"})


#: The modules of MLflow and of the libraries its stores use: warnings they raise are theirs to fix, not the user's.
DEPENDENCY_MODULES = r"(mlflow|sqlalchemy|alembic|pydantic|google\.protobuf|pkg_resources|opentelemetry|urllib3|requests)(\.|$)"
_contained = threading.Lock()
_SUPPRESS_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
_SUPPRESS_LOCK = threading.Lock()
_contained_done: list[bool] = []


def contain_dependency_warnings() -> None:
    """Under warnings-as-errors (``python -W error``, ``filterwarnings("error")``), a deprecation warning inside
    MLflow or SQLAlchemy would make a healthy sink fail to open; the warnings *attributed to those modules* are shown
    (``"default"``: once per place) instead of raised. Added once, only when an ``"error"`` filter is in place; the
    user's own code, and spherewatch's, still raise. A process-wide filter (``warnings`` has no per-thread one), but
    narrowed to those modules, so nothing else the training thread does is affected."""
    with _contained:
        if _contained_done or not any(f[0] == "error" for f in warnings.filters):
            return
        _contained_done.append(True)
        warnings.filterwarnings("default", module=DEPENDENCY_MODULES)


def _json_list(encoded: list[str]) -> str:
    """A JSON list of already encoded records, one per line."""
    return "[\n" + ",\n".join(encoded) + "\n]" if encoded else "[]"


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
    * scalars are sent in order of importance (:func:`spherewatch.keys.order_keys`), so what MLflow takes from the
      first logged key (the compare page's parallel-coordinates default, the metrics list of a run) starts with
      uniformity, effective rank, mean cosine, alignment (its default chart view sorts charts by key within a
      section);
    * the chart view (``chart_view``): a saved view of the experiment's runs page (the experiment tag
      ``mlflow.sharedViewState.spherewatch``, :mod:`spherewatch.sinks.mlflow_view`): the sections "Collapse
      overview" (the four overview metrics, the host's loss, the alert count), "Spectrum", "Health checks"
      (closed), two cards per row, no smoothing; :meth:`view_url` opens it in the model training workflow, and the
      run's description links to it;
    * histograms: MLflow has no histogram type, so spectra go to JSON artifacts: the latest per key in
      ``spherewatch/spectra.json`` (``{key: {"step", "time", "values"}}``) and every one in
      ``spherewatch/spectra_history.json`` (``{key: [{"step", "time", "values"}, ...]}``, thinned to at most 512
      per key), written on :meth:`close` and on :meth:`flush` when a spectrum changed and the last write is at
      least ``artifact_interval`` seconds old (the Monitor flushes after every sampling step);
    * alerts: the tags ``spherewatch.alert_state`` = the worst severity among the alerts still open (``ok``
      from the first evaluation on, and again once every alert has resolved), ``spherewatch.worst_severity``
      = the worst ever fired, ``spherewatch.first_alert_step``; the metric ``<prefix>/alerts/count`` =
      cumulative number of fired alerts (0 from the first evaluation), at the alert's step; the JSON artifact
      ``spherewatch/alerts.json`` (every alert so far, written by :meth:`flush` at most once per
      ``artifact_interval`` and by :meth:`close`, not once per alert);
    * params: :meth:`log_params` (the Monitor logs its configuration as ``spherewatch.*`` params), never
      overwriting a param the run already holds;
    * at :meth:`close`: the run's description (tag ``mlflow.note.content``) = :meth:`verdict`, only on a run
      this sink created;
    * artifacts: :meth:`log_artifacts` stores a folder with the run; a Monitor that opened this sink itself hands it
      the ``spherewatch report`` of the run (``report.html`` and its PNGs, under ``spherewatch/report/``) before
      closing it, reading the run back through :meth:`report_source`.

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
        created_run: with ``run_id``: the run was created by this Monitor run earlier (a resumed run), so this sink
            describes and ends it at :meth:`close` like its creator would.
        chart_view: save spherewatch's chart view on the run's experiment (:mod:`spherewatch.sinks.mlflow_view`: the
            collapse overview first, opened by :meth:`view_url`), with the first spherewatch values and again at
            :meth:`close` when new keys were logged.

    Threads: the Monitor calls a sink from its one writer thread. ``MlflowClient`` calls with an explicit
    ``run_id`` are safe from any thread (no fluent, thread-local active-run state is used after construction);
    the host's active run is looked up by the caller, on the training thread, and passed as ``run_id``.

    Raises:
        ModuleNotFoundError: mlflow is not installed.
        ValueError: the experiment exists but is deleted.

    Example::

        sink = MLflowSink("sqlite:///mlflow.db", experiment_name="simclr")
        sink.log_scalars(100, {"spherewatch/uniformity": -3.41})
        sink.close()  # ends the run it created
    """

    name = "mlflow"
    supports_params = True
    supports_batches = True
    supports_artifacts = True
    #: a server: a Monitor hands it records on a thread of its own (a slow server never holds the local sinks back)
    remote = True
    #: most metrics in one ``log_batch`` (MLflow's limit)
    batch_limit = _MAX_METRICS_PER_BATCH

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
        created_run: bool = False,
        chart_view: bool = True,
    ) -> None:
        super().__init__()
        contain_dependency_warnings()
        try:
            import mlflow
            from mlflow import MlflowClient
            from mlflow.entities import Metric, RunTag
        except ImportError as err:
            raise ModuleNotFoundError("MLflowSink needs `mlflow`: pip install 'spherewatch[mlflow]'.") from err
        self._Metric = Metric
        self._RunTag = RunTag
        self.prefix = prefix.rstrip("/")
        self._alerts: list[Alert] = []  # the first KEEP_ALERTS
        self._alert_ids = SeenAlerts(keep=KEEP_ALERT_IDS)  # the latest ones (a module setting: tests shrink it)
        self._alert_part: list[str] = []  # the open part's records, JSON-encoded
        self._alert_parts = 0
        self._alert_part_stem = f"{ALERTS_PART_PREFIX}{int(time.time() * 1000):013d}-"
        self._alerts_dirty = False
        self._alerts_written_at = -math.inf
        self.run_key = run_key
        self._spectra: dict[str, dict[str, Any]] = {}
        self._spectra_dirty = False
        self._spectra_written_at = -math.inf
        self.artifact_interval = float(artifact_interval)
        self.chart_view = bool(chart_view)
        self._experiment_id: str | None = None
        self._view_keys: dict[str, None] = {}  # every key logged, in order (the saved chart view lists them)
        self._view_written: set[str] = set()  # the keys of the last view written
        self._view_tried = False
        self._view_state()

        active = active_run(tracking_uri) if run_id is None else None
        if run_id is not None:
            self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
            self._client = MlflowClient(self.tracking_uri)
            self.run_id = str(run_id)
            self.created_run = bool(created_run)
        elif active is not None:
            self.run_id, self.tracking_uri = active
            self._client = MlflowClient(self.tracking_uri)
            self.created_run = False
        else:
            self.tracking_uri = tracking_uri or default_tracking_uri()
            self._client = MlflowClient(self.tracking_uri)
            self.run_id = open_run(self._client, self.tracking_uri, experiment_name=experiment_name or "spherewatch",
                                   run_name=run_name, tags=tags, artifact_location=artifact_location,
                                   run_key=run_key, find_run=find_run)
            self.created_run = True
        if tags and not self.created_run:
            self._client.log_batch(
                self.run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()], synchronous=True
            )

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` in use."""
        return self._client

    def _log_metrics(self, metrics: list[Any], tags: tuple[Any, ...] = ()) -> None:
        for start in range(0, max(len(metrics), 1), _MAX_METRICS_PER_BATCH):
            chunk = metrics[start:start + _MAX_METRICS_PER_BATCH]
            self._client.log_batch(self.run_id, metrics=chunk, tags=list(tags) if start == 0 else [],
                                   synchronous=True)

    # ------------------------------------------------------------------ what is logged (spherewatch.keys)
    def _view_state(self) -> None:
        """State of what this sink shows: the alert state, the spectrum history, the verdict."""
        self._open_alerts: dict[tuple[str, str], str] = {}  # (rule, key) -> severity, of alerts not resolved
        self._worst = "ok"
        self._first_alert_step: int | None = None
        self._first_critical_step: int | None = None
        self._fired = 0
        self._started = False  # alert state and count logged (at the first spherewatch values)
        self._steps: list[int] = []  # first and last step with spherewatch values
        self._evaluations = 0
        self._spectra_history: dict[str, list[dict[str, Any]]] = {}
        self._params_logged: set[str] = set()
        self._pending_params: dict[str, str] = {}

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """One ``log_batch`` with every key, in order of importance (:func:`spherewatch.keys.order_keys`; chunks of
        1000 metrics beyond that). The first call holding spherewatch keys also logs ``<prefix>/alerts/count`` = 0
        and the tag ``spherewatch.alert_state`` = ``ok`` (a healthy run reads ``ok``/0, not blank)."""
        self.log_scalars_batch([(step, scalars, wall_time)])

    def _record_metrics(self, step: int, scalars: Mapping[str, float], wall_time: float | None, started: bool):
        """``(metrics, own)`` of one record, the alert count 0 added to the first record holding spherewatch keys."""
        timestamp = round((time.time() if wall_time is None else float(wall_time)) * 1000)
        values = {str(k): float(v) for k, v in scalars.items()}
        own = any(parse_key(k, self.prefix) is not None for k in values)
        if own and not started:
            values[alert_count_key(self.prefix)] = float(self._fired)
        return [self._Metric(k, values[k], timestamp, int(step)) for k in order_keys(values, self.prefix)], own

    def _note_steps(self, step: int) -> None:
        self._started = True
        self._evaluations += 1
        self._steps = [min(self._steps[0], int(step)) if self._steps else int(step),
                       max(self._steps[-1], int(step)) if self._steps else int(step)]
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Queue run parameters (``{name: value}``, values as strings of at most 500 characters); they are sent with the
        next :meth:`log_scalars` (so an outage delays them like any record, and the resilient wrapper retries them).
        A parameter the run already holds is never overwritten (MLflow params are immutable, and the host's are the
        host's): it is skipped. The Monitor logs its configuration here with the prefix ``spherewatch.``."""
        self._check_open()
        for k, v in params.items():
            if str(k) not in self._params_logged:
                self._pending_params.setdefault(str(k), str(v)[:_MAX_PARAM_LENGTH])

    def _send_params(self) -> None:
        """Send the queued params the run does not hold yet (raises like any MLflow call; kept queued then)."""
        from mlflow.entities import Param

        if not self._pending_params:
            return
        existing = set(self._client.get_run(self.run_id).data.params)
        todo = [Param(k, v) for k, v in self._pending_params.items() if k not in existing]
        for start in range(0, len(todo), 100):  # MLflow's log_batch limit on params
            self._client.log_batch(self.run_id, params=todo[start:start + 100], synchronous=True)
        self._params_logged.update(self._pending_params)
        self._pending_params = {}

    def log_scalars_batch(self, records: list[tuple[int, Mapping[str, float], float | None]]) -> None:
        """Several steps' scalars ``[(step, values, wall_time), ...]`` in as few ``log_batch`` calls as MLflow allows
        (a replayed backlog: one request per 1000 metrics instead of one per step), with the same bookkeeping as
        :meth:`log_scalars` (the alert count 0 and ``alert_state`` with the first spherewatch values); the state is
        updated only once MLflow took the records, so a retried batch is sent the same way."""
        self._check_open()
        metrics: list[Any] = []
        started, own_steps = self._started, []
        for step, scalars, wall_time in records:
            got, own = self._record_metrics(step, scalars, wall_time, started)
            metrics += got
            if own:
                started = True
                own_steps.append(int(step))
        tags: tuple[Any, ...] = ()
        if own_steps and not self._started:
            if self.created_run:
                mark_training_experiment(self._client, self.run_id)
            tags = tuple(self._state_tags())
        self._send_params()
        if metrics:
            self._log_metrics(metrics, tags=tags)
        for step in own_steps:
            self._note_steps(step)
        self._view_keys.update(dict.fromkeys(m.key for m in metrics))
        if self._started and not self._view_tried:  # once while the run goes on (a failure: again at close)
            self._view_tried = True
            self._write_view()

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: float | None = None) -> None:
        """Keep the spectrum of ``key``: the latest in ``spherewatch/spectra.json`` and every one (thinned to at most
        512 per key) in ``spherewatch/spectra_history.json``, written on flush/close."""
        self._check_open()
        arr = as_float_array(values)
        record = {
            "step": int(step),
            "time": time.time() if wall_time is None else float(wall_time),
            "values": [encode_float(v) for v in arr.tolist()],
        }
        self._spectra[str(key)] = record
        history = self._spectra_history.setdefault(str(key), [])
        if not history or history[-1]["step"] != record["step"]:  # a replay adds nothing
            history.append(record)
        if len(history) > _MAX_SPECTRA_PER_KEY:
            del history[1:-1:2]  # keep the first and the latest, every other one between
        self._spectra_dirty = True

    def _state_tags(self) -> list[Any]:
        """``alert_state`` (worst severity of the alerts still open, ``ok`` when none), ``worst_severity`` (worst ever
        fired) and ``first_alert_step`` (once an alert fired)."""
        state = worst_severity(self._open_alerts.values(), default=OK)
        tags = [self._RunTag(ALERT_STATE_TAG, state), self._RunTag(WORST_SEVERITY_TAG, self._worst)]
        if self._first_alert_step is not None:
            tags.append(self._RunTag(FIRST_ALERT_STEP_TAG, str(self._first_alert_step)))
        return tags

    def log_alert(self, alert: Alert) -> None:
        """Update the alert tags, log the cumulative count of fired collapse alerts, mark
        ``spherewatch/alerts.json`` for rewriting (by :meth:`flush` at most once per ``artifact_interval`` and by
        :meth:`close`, not once per alert). A resolved alert (``alert.status == "resolved"``) closes the open one of the same
        rule and key; faults of the monitor itself and changes of regime are listed in the JSON but change neither
        state nor count (:func:`spherewatch.alerts.verdict.is_collapse_alert`)."""
        self._check_open()
        facts = alert_facts(alert)
        resolved, counted = facts.resolved, facts.counted
        new = self._alert_ids.add(facts.id)
        if new:
            if len(self._alerts) < KEEP_ALERTS:
                self._alerts.append(alert)
            self._alert_part.append(json.dumps(alert_to_json(alert), allow_nan=False))
        metrics = []
        if new and counted:
            if resolved:
                self._open_alerts.pop((alert.rule, alert.key), None)
            else:
                self._fired += 1
                self._open_alerts[(alert.rule, alert.key)] = str(alert.severity)
                self._worst = worst_severity((self._worst, alert.severity))
                if self._first_alert_step is None or alert.step < self._first_alert_step:
                    self._first_alert_step = int(alert.step)
                if alert.severity == "critical" and (self._first_critical_step is None
                                                     or alert.step < self._first_critical_step):
                    self._first_critical_step = int(alert.step)
        if counted and not resolved:
            metrics.append(self._Metric(alert_count_key(self.prefix), float(self._fired),
                                        round(alert.time * 1000), int(alert.step)))
        self._log_metrics(metrics, tags=tuple(self._state_tags()))
        self._alerts_dirty = True
        if len(self._alert_part) >= ALERTS_PER_PART:  # seal the full part: written once, never again
            name = f"{self._alert_part_stem}{self._alert_parts:05d}.json"
            self._client.log_text(self.run_id, _json_list(self._alert_part), name)
            self._alert_parts += 1
            self._alert_part = []

    def _write_alerts(self) -> None:
        if not self._alerts_dirty:
            return
        self._client.log_text(self.run_id, _json_list(self._alert_part), ALERTS_ARTIFACT)
        self._alerts_dirty = False
        self._alerts_written_at = time.monotonic()

    def verdict(self) -> str:
        """One paragraph for the run's description: collapsed or healthy, when, and where to look."""
        first, last = (self._steps[0], self._steps[-1]) if self._steps else (None, None)
        span = f"steps {first}–{last}" if first is not None else "no evaluation yet"
        if self._first_alert_step is None:
            head = f"**spherewatch: healthy** — no collapse alert in {self._evaluations} evaluations ({span})."
        else:
            head = f"**spherewatch: collapse detected at step {self._first_alert_step}**"
            if self._first_critical_step is not None and self._first_critical_step != self._first_alert_step:
                head += f", critical at step {self._first_critical_step}"
            elif self._first_critical_step is not None:
                head += " (critical)"
            head += f" — {self._fired} alert(s) in {self._evaluations} evaluations ({span})."
            shown = collapse_alerts(self._alerts)[:2]
            if shown:
                head += " First: " + "; ".join(
                    f"step {a.step} {a.severity} `{a.rule}` on `{a.key}`" for a in shown) + "."
        charts = "Charts: the `spherewatch` section (uniformity, effective rank, mean cosine, alignment)"
        if self.chart_view and self._view_written:
            from spherewatch.sinks.mlflow_view import VIEW_NAME, view_path

            charts = (f"Charts: the view [{VIEW_NAME}]({view_path(self.experiment_id)}) (uniformity, effective rank, "
                      "mean cosine, alignment, the loss and the alert count first)")
        return (head + f" {charts}; alerts: the tags `spherewatch.*` and the artifact `spherewatch/alerts.json`; the "
                f"full report: `{REPORT_ARTIFACT_DIR}/report.html`.")

    @property
    def experiment_id(self) -> str:
        """The id of the run's experiment (asked of the server once)."""
        if self._experiment_id is None:
            self._experiment_id = str(self._client.get_run(self.run_id).info.experiment_id)
        return self._experiment_id

    def _write_view(self) -> None:
        """Save the chart view (:func:`spherewatch.sinks.mlflow_view.write_view`) when its keys changed; best effort."""
        if not self.chart_view or set(self._view_keys) == self._view_written:
            return
        from spherewatch.sinks.mlflow_view import write_view

        try:
            experiment_id = self.experiment_id
        except Exception as err:  # the server is gone for now: written at close
            logger.debug("MLflowSink: no chart view yet (%s).", err)
            return
        if write_view(self._client, experiment_id, list(self._view_keys), self.prefix):
            self._view_written = set(self._view_keys)

    def view_url(self, base: str | None = None) -> str:
        """The MLflow UI's chart view of this run's experiment: the collapse overview first, in model training mode
        (:func:`spherewatch.sinks.mlflow_view.view_url`; ``base``: the UI's address, by default the tracking server,
        or ``http://127.0.0.1:5000`` where ``mlflow ui`` serves a local store)."""
        from spherewatch.sinks.mlflow_view import view_url

        return view_url(self, base)

    def log_artifacts(self, local_dir: str, artifact_path: str) -> None:
        """Store the files of ``local_dir`` with the run under ``artifact_path`` (e.g. the report: ``spherewatch/report``)."""
        self._check_open()
        self._client.log_artifacts(self.run_id, local_dir, artifact_path)

    def report_source(self) -> dict[str, Any] | None:
        """``{"run": run_id, "tracking_uri": ..., "prefix": ...}`` for ``spherewatch report``, once spherewatch values
        were logged (``None`` before); the spectra and alerts artifacts are written first, so the report sees them."""
        if self._closed or not self._started:
            return None
        self._send_params()
        self._write_spectra()
        self._write_alerts()
        return {"run": self.run_id, "tracking_uri": self.tracking_uri, "prefix": self.prefix}

    @property
    def alerts(self) -> list[Alert]:
        """Alerts logged so far (a copy; the first :data:`KEEP_ALERTS`: the run's artifacts hold them all)."""
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
            self._client.log_text(self.run_id, json.dumps(self._spectra_history, allow_nan=False),
                                  SPECTRA_HISTORY_ARTIFACT)
            self._spectra_dirty = False
            self._spectra_written_at = time.monotonic()

    def close(self) -> None:
        """Flush; end the run (``FINISHED``) only if this sink created it. Idempotent."""
        if self._closed:
            return
        self._send_params()
        self._write_spectra()
        self._write_alerts()
        if self._started:
            self._write_view()
        if self.created_run:  # the monitor owns the run: its description is the verdict
            self._client.set_tag(self.run_id, NOTE_TAG, self.verdict())
            self._end_run()
        self._closed = True

    def _end_run(self) -> None:
        """End the run (``FINISHED``). MLflow prints "View run ... at: <tracking URI>" when a run over HTTP ends; with
        credentials in the URI (``http://user:password@host``) that line would show them: it is suppressed then, and
        the run's place is logged with the credentials redacted."""
        if "@" not in str(self.tracking_uri or "").split("://", 1)[-1].split("/", 1)[0]:
            self._client.set_terminated(self.run_id, status="FINISHED")
            return
        with _SUPPRESS_LOCK:
            old = os.environ.get(_SUPPRESS_URL)
            os.environ[_SUPPRESS_URL] = "true"
            try:
                self._client.set_terminated(self.run_id, status="FINISHED")
            finally:
                if old is None:
                    os.environ.pop(_SUPPRESS_URL, None)
                else:
                    os.environ[_SUPPRESS_URL] = old
        logger.info("spherewatch: MLflow run %s ended (%s).", self.run_id, redact_uri(self.tracking_uri))

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
