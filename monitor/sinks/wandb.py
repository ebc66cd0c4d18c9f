"""Stream metrics, spectra and alerts to a Weights & Biases run: the host's active run, or one this sink opens.

``wandb`` is imported when the sink is built, never by ``import spherewatch``.

Example::

    import wandb, spherewatch as sw

    run = wandb.init(project="simclr")                     # the host's run
    mon = sw.Monitor(sinks=("wandb",), alert_channels=("wandb",))  # into that run, alerts as W&B alerts
"""
from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from spherewatch.alerts.verdict import OK, verdict, worst_severity
from spherewatch.keys import alert_count_key, order_keys, param_field
from spherewatch.sinks.alert_records import LEVELS, SeenAlerts, alert_facts, alert_text, alert_title
from spherewatch.sinks.base import Sink, as_float_array

if TYPE_CHECKING:
    from spherewatch.alerts.alert import Alert

__all__ = ["ALERT_STATE_KEY", "VERDICT_KEY", "WandbSink", "active_run", "alert_title"]

logger = logging.getLogger("spherewatch.sinks")

#: run.summary keys (under the prefix): the worst severity of the alerts still open, the worst ever, the first step
#: with an alert, the number fired, and the one-line verdict.
ALERT_STATE_KEY = "alert_state"
WORST_SEVERITY_KEY = "worst_severity"
FIRST_ALERT_STEP_KEY = "first_alert_step"
ALERTS_FIRED_KEY = "alerts_fired"
VERDICT_KEY = "verdict"
#: The most bins of a histogram sent to W&B (fewer when there are fewer values).
_MAX_BINS = 64


def active_run() -> Any:
    """The host's active ``wandb.run`` (``None`` when wandb is not imported, no run is active, or it has finished).
    The one place spherewatch looks for the host's W&B run, so that it never opens a second one beside it."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None or _finished(run):
        return None
    return run


def _finished(run: Any) -> bool:
    return bool(getattr(run, "_is_finished", False))


class WandbSink(Sink):
    """Log metrics, spectra and alerts into a W&B run.

    Run resolution, in order:

    1. ``run`` given (e.g. Lightning's ``WandbLogger.experiment``, the run of HF's ``WandbCallback``): log to it;
    2. the host's active ``wandb.run``: log to it, never opening a second run beside it;
    3. otherwise open a run (``wandb.init(project=..., reinit="create_new")``, so the global ``wandb.run`` of the
       host is never replaced) and finish it at :meth:`close`. Only a run this sink opened is finished.

    ``WANDB_MODE=offline`` and ``disabled`` (and ``mode=``) are wandb's own: an offline run writes its ``.wandb``
    file under ``WANDB_DIR``; a disabled run takes everything and keeps nothing.

    What goes where:

    * each evaluation is one history row: ``<prefix>/step`` = the evaluation's step, its scalars and
      ``<prefix>/alerts/count`` (fired collapse alerts so far) in one ``run.log``; each spectrum (a
      ``wandb.Histogram``) and the count updated by the evaluation's alerts join that row (``commit=False``).
      ``define_metric("<prefix>/*", step_metric="<prefix>/step")`` (and the same for each key): W&B plots
      spherewatch's charts against spherewatch's step, never against the host's. No ``step=`` is ever passed. In the
      host's run the row joins the host's open row, so the host's own ``step=`` and ``commit`` keep their meaning and
      none of its points is dropped; only when spherewatch evaluates more often than the host logs does it commit a
      row itself, which advances the run's step by one (harmless without ``step=``, as HF's and Lightning's loggers
      log). Every ``run.log`` happens in the call that carries the record, so a failure is the resilient wrapper's to
      spool and retry. See :meth:`_log`;
    * the Monitor's configuration (:meth:`log_params`): ``run.config["<prefix>"]`` (a nested dict; a key the run's
      config already holds is never overwritten);
    * the alert state in ``run.summary``: ``<prefix>/alert_state`` (worst open severity, ``ok`` when none),
      ``<prefix>/worst_severity``, ``<prefix>/first_alert_step``, ``<prefix>/alerts_fired`` and
      ``<prefix>/verdict`` (:func:`spherewatch.alerts.verdict.verdict`);
    * with ``alerts=True`` (the alert channel ``"wandb"``): each fired alert (not a resolution, not a reminder of an
      alert still open) is one ``run.alert(title, text, level, wait_duration)``, titled with its identity
      (:func:`alert_title`), so that a persisting condition is one W&B alert.

    The Monitor calls it from its writer thread (wandb's client hands every call to its own service process through
    one event loop, so this is safe while the host logs from the training thread), behind a
    :class:`~spherewatch.sinks.ResilientSink`: a failing ``run.log`` is retried with backoff and spooled, in order.

    Args:
        run: the W&B run to log to.
        project, entity, run_name, group, tags, mode, dir: for a run this sink opens (``wandb.init``).
        prefix: the key prefix (``spherewatch``).
        alerts: send fired alerts as ``run.alert`` (the ``"wandb"`` alert channel).
        alert_wait: seconds W&B waits before it sends another alert with the same title (``wait_duration``).
        run_id: open (resume) this run id when there is no active run (a replay of a crashed run's spool).
    """

    name = "wandb"
    supports_params = True
    #: a service process (and a server online): the Monitor hands it records on a thread of its own
    remote = True

    def __init__(self, run: Any = None, *, project: str | None = None, entity: str | None = None,
                 run_name: str | None = None, group: str | None = None, tags: Any = None, mode: str | None = None,
                 dir: str | None = None, prefix: str = "spherewatch", alerts: bool = False,
                 alert_wait: float = 3600.0, run_id: str | None = None) -> None:
        super().__init__()
        try:
            import wandb
        except ImportError as err:
            raise ModuleNotFoundError("WandbSink needs `wandb`: pip install 'spherewatch[wandb]'.") from err
        self._wandb = wandb
        self.prefix = prefix.rstrip("/")
        self.alerts_enabled = bool(alerts)
        self.alert_wait = float(alert_wait)
        if run is None:
            run = active_run()
            if run is not None and run_id is not None and getattr(run, "id", None) != run_id:
                run = None  # a replay of another run's spool: never into the host's current run
        if run is not None:
            self.run, self.created_run = run, False
        else:
            kwargs: dict[str, Any] = {"project": project or "spherewatch", "entity": entity, "name": run_name,
                                      "group": group, "tags": list(tags) if tags else None, "mode": mode, "dir": dir,
                                      "reinit": "create_new"}
            if run_id is not None:
                kwargs.update(id=run_id, resume="allow")
            _check_credentials(wandb, mode)
            self.run = wandb.init(**{k: v for k, v in kwargs.items() if v is not None})
            self.created_run = True
        self.run_id = getattr(self.run, "id", None)
        self._defined: set[str] = set()
        self._row_step: int | None = None  # the evaluation whose history row is open (takes its spectra, count)
        self._attached_at: int | None = None  # the host's counter past which that row is surely closed
        self._params: dict[str, Any] = {}
        self._open: dict[tuple[str, str], str] = {}
        self._alerts: list[Any] = []
        self._alert_ids = SeenAlerts()  # delivered
        self._counted = SeenAlerts()  # in the alert state
        self._worst = OK
        self._first_alert_step: int | None = None
        self._fired = 0
        self._last_step: int | None = None
        self._summary_dirty = False
        self._started = False
        self._count_due = False
        self._define(f"{self.prefix}/step", None)
        self._define(f"{self.prefix}/*", f"{self.prefix}/step")

    # ------------------------------------------------------------------ helpers
    @property
    def step_key(self) -> str:
        """``<prefix>/step``: the x axis of spherewatch's charts."""
        return f"{self.prefix}/step"

    def _define(self, name: str, step_metric: str | None) -> None:
        if name in self._defined:
            return
        if step_metric is None:
            self.run.define_metric(name)
        else:
            self.run.define_metric(name, step_metric=step_metric)
        self._defined.add(name)

    def _own(self, key: str) -> bool:
        return key.startswith(self.prefix + "/")

    def _host_step(self) -> int | None:
        """The run's step counter as wandb's client keeps it (``None``: unknown)."""
        step = getattr(self.run, "_local_step", getattr(self.run, "_step", None))
        return step if isinstance(step, int) else None

    def _log(self, data: dict[str, Any], new_row: bool) -> None:
        """One ``run.log(data, commit=False)``: into the history row that is open, which the host (or the next
        evaluation, or ``finish``) commits. ``new_row``: the data starts an evaluation, so the row that holds the
        previous evaluation must be closed first.

        In the host's run the row rides along with the host's open row: the host's ``step=`` and ``commit`` keep their
        meaning and no step of the host's is taken, as long as the host has moved on since the previous evaluation
        (it logs at least as often as spherewatch evaluates). When it has not, or in a run of this sink's own, the
        previous row is committed here (``run.log({}, commit=True)``), which advances the run's step by one: harmless
        when the host logs without ``step=`` (HF's and Lightning's loggers, ``wandb.log(d)``).
        """
        for key in data:
            if key != self.step_key and self._own(key):
                self._define(key, self.step_key)
        if new_row and self._attached_at is not None:
            host = self._host_step()
            if self.created_run or host is None or host <= self._attached_at:  # the previous row may be open
                self.run.log({}, commit=True)
            self._attached_at = None  # closed: a retry of this call does not commit again
        self.run.log(data, commit=False)
        # wandb's client moves its counter just after it hands a row over: read now, the value can lag the row this
        # data joined by one, so that row is surely closed once the counter passes this value plus one
        after = self._host_step()
        if after is not None:
            self._attached_at = max(after + 1, self._attached_at if self._attached_at is not None else after + 1)
        else:
            self._attached_at = -1  # unknown counter: always commit before the next evaluation

    # ------------------------------------------------------------------ Sink
    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """Start the history row of evaluation ``step``: ``<prefix>/step``, the scalars in order of importance and the
        alert count, in one ``run.log`` (see :meth:`_log`); its spectra and alerts join that row."""
        self._check_open()
        values = {str(k): float(v) for k, v in scalars.items()}
        own = any(self._own(k) for k in values)
        row: dict[str, Any] = {self.step_key: int(step)} if own else {}
        for key in order_keys(values, self.prefix):
            row[key] = values[key]
        if own:
            row[alert_count_key(self.prefix)] = self._fired  # in every evaluation's row: a step line
        new_row = own and self._row_step != int(step)
        self._log(row, new_row)
        if own:
            self._row_step = int(step)
            self._last_step = int(step) if self._last_step is None else max(self._last_step, int(step))
            if not self._started:
                self._started = self._summary_dirty = True  # a healthy run reads ok, not blank

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: float | None = None) -> None:
        """``key`` as a ``wandb.Histogram`` (finite values, at most 64 bins) in the row of evaluation ``step``."""
        self._check_open()
        arr = as_float_array(values)
        arr = arr[[math.isfinite(v) for v in arr]] if arr.size else arr
        if arr.size == 0:
            return
        hist = self._wandb.Histogram(arr.tolist(), num_bins=max(1, min(_MAX_BINS, int(arr.size))))
        self._log({self.step_key: int(step), str(key): hist}, self._row_step != int(step))
        self._row_step = int(step)

    def log_alert(self, alert: Alert) -> None:
        """Update the alert state (``run.summary``), count fired collapse alerts into the evaluation's row, and with
        ``alerts=True`` send a newly fired alert as one ``run.alert``."""
        self._check_open()
        facts = alert_facts(alert)
        if facts.id in self._alert_ids:  # a redelivered record: nothing twice
            return
        if self._counted.add(facts.id) and facts.counted:  # the state once, even when run.alert below fails and
            self._count(alert, facts.resolved, facts.new_episode)  # the alert is retried
        if self._count_due:  # the count of the evaluation's row, now with this alert (the same key: updated)
            self._log({self.step_key: int(alert.step), alert_count_key(self.prefix): self._fired},
                      self._row_step != int(alert.step))
            self._row_step, self._count_due = int(alert.step), False
        if self.alerts_enabled and not facts.resolved and (facts.new_episode or facts.fault):
            self.run.alert(title=alert_title(alert, self.prefix), text=alert_text(alert),
                           level=LEVELS.get(str(alert.severity), "WARN"), wait_duration=self.alert_wait)
        self._alert_ids.add(facts.id)

    def _count(self, alert: Any, resolved: bool, new_episode: bool) -> None:
        if resolved:
            self._open.pop((alert.rule, alert.key), None)
        else:
            self._open[(alert.rule, alert.key)] = str(alert.severity)
            if new_episode:
                self._fired += 1
                if len(self._alerts) < 1000:
                    self._alerts.append(alert)
                self._worst = worst_severity((self._worst, alert.severity))
                if self._first_alert_step is None or alert.step < self._first_alert_step:
                    self._first_alert_step = int(alert.step)
                self._count_due = True
        self._summary_dirty = True

    def _summary(self) -> dict[str, Any]:
        p = self.prefix
        out: dict[str, Any] = {
            f"{p}/{ALERT_STATE_KEY}": worst_severity(self._open.values(), default=OK),
            f"{p}/{WORST_SEVERITY_KEY}": self._worst,
            f"{p}/{ALERTS_FIRED_KEY}": self._fired,
            f"{p}/{VERDICT_KEY}": self.verdict(),
        }
        if self._first_alert_step is not None:
            out[f"{p}/{FIRST_ALERT_STEP_KEY}"] = self._first_alert_step
        return out

    def verdict(self) -> str:
        """The run's one-line verdict (``collapse detected at step 40`` / ``healthy: no alerts in 300 steps``)."""
        return verdict(self._alerts, last_step=self._last_step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The Monitor's configuration (``spherewatch.<field>``) into ``run.config["<prefix>"]`` as a nested dict (sent
        with the next :meth:`flush`); other parameters (the host's) at the top level. Never overwrites a value the
        run's config already holds."""
        self._check_open()
        for k, v in params.items():
            self._params[str(k)] = v

    def _send_params(self) -> None:
        if not self._params:
            return
        own: dict[str, Any] = {}
        other: dict[str, Any] = {}
        for k, v in self._params.items():
            field = param_field(k)
            if field is not None:
                own[field] = v
            else:
                other[k] = v
        existing = dict(self.run.config.get(self.prefix) or {}) if own else {}
        update: dict[str, Any] = {k: v for k, v in other.items() if k not in self.run.config}
        if own:
            update[self.prefix] = {**own, **existing}
        if update:
            self.run.config.update(update, allow_val_change=True)
        self._params = {}

    def flush(self) -> None:
        """Send the evaluation's row, the configuration and the alert state (``run.summary``)."""
        if self._closed:
            return
        self._send_params()
        if self._summary_dirty:
            self.run.summary.update(self._summary())
            self._summary_dirty = False

    def close(self) -> None:
        """Flush; finish the run only if this sink opened it (the host's run stays open for the host). Idempotent."""
        if self._closed:
            return
        if not _finished(self.run):
            self._summary_dirty = self._summary_dirty or self._last_step is not None
            self.flush()
            if self.created_run:
                self.run.finish()
        else:
            logger.warning("spherewatch: the W&B run %s finished before the Monitor closed; its last alert state "
                           "and verdict are not in the run's summary (finish the run after the Monitor closes).",
                           self.run_id)
        self._closed = True

    def is_permanent_error(self, exc: BaseException) -> bool:
        """A run that has finished can take nothing more (``UsageError``): permanent. Others are transient."""
        usage = getattr(getattr(self._wandb, "errors", None), "UsageError", None)
        if usage is not None and isinstance(exc, usage):
            return True
        return super().is_permanent_error(exc)

    def __repr__(self) -> str:
        return f"WandbSink(run_id={self.run_id!r}, created_run={self.created_run}, closed={self._closed})"


def _check_credentials(wandb: Any, mode: str | None) -> None:
    """An online run needs W&B credentials: without them ``wandb.init`` would ask for them on the terminal, from the
    Monitor's writer thread. Fail instead, saying how to fix it (no network: only the key's presence is checked)."""
    effective = str(mode or os.environ.get("WANDB_MODE") or "online").lower()
    if effective in ("offline", "disabled", "dryrun", "shared"):
        return
    try:
        logged_in = wandb.login(prompt=False, verify=False)
    except Exception:  # noqa: BLE001 - an older wandb without these keywords: let wandb.init decide
        return
    if not logged_in:
        raise RuntimeError("WandbSink: no W&B credentials for an online run: run `wandb login`, set WANDB_API_KEY, "
                           "or set WANDB_MODE=offline (sync later with `wandb sync`).")


