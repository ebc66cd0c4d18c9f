"""Stream metrics, spectra and alerts to TensorBoard (a new event file, or the host's writer)."""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from spherewatch.delivery.files import make_private_dirs
from spherewatch.keys import RESERVED_TAPS
from spherewatch.keys import parse_key as split_key
from spherewatch.sinks.alert_records import SeenAlerts, alert_facts
from spherewatch.sinks.base import Sink, as_float_array

if TYPE_CHECKING:
    from spherewatch.alerts.alert import Alert

__all__ = ["ALERT_LEVEL_TITLE", "TensorBoardSink", "alert_level_key", "alert_markdown", "custom_scalars_url"]

logger = logging.getLogger("spherewatch.sinks")

_WRITER_METHODS = ("add_scalar", "add_histogram", "add_text", "flush")
#: A tap's path segment in the layout's regexes: any segment but the reserved ones (the alert counter, faults).
_TAP_SEGMENT = f"(?!(?:{'|'.join(map(re.escape, RESERVED_TAPS))})/)[^/]+"
#: The chart of the alert level in the layout's overview (the values are :data:`spherewatch.alerts.verdict.SEVERITY_RANK`).
ALERT_LEVEL_TITLE = "alert level (0 ok, 2 warning, 3 critical)"
_ALERT_LEVEL_DESCRIPTION = ("the worst severity among the collapse alerts open at this step (0 ok, 1 info, 2 warning, "
                            "3 critical): it rises at the step an alert fires and falls when the alert resolves; the "
                            "alert's text is in the Text tab at that step.")
#: TensorBoard's own default address (``tensorboard --logdir ...``).
DEFAULT_TENSORBOARD = "http://localhost:6006"


def alert_level_key(prefix: str = "spherewatch") -> str:
    """The alert level scalar, ``<prefix>/alerts/level`` (TensorBoard): 0 while no alert is open, else the rank of the
    worst open one (:data:`spherewatch.alerts.verdict.SEVERITY_RANK`: 1 info, 2 warning, 3 critical)."""
    return f"{prefix.rstrip('/')}/alerts/level"


def custom_scalars_url(base: str = DEFAULT_TENSORBOARD) -> str:
    """The Custom Scalars dashboard with smoothing off (``_smoothingWeight=0`` in the URL: TensorBoard's smoothing is a
    setting of its UI, 0.6 by default, which would turn the alert count 0 -> 1 into 0.4 and blur when it rose).

    Example:
        >>> custom_scalars_url()
        'http://localhost:6006/#custom_scalars&_smoothingWeight=0'
    """
    return f"{base.rstrip('/')}/#custom_scalars&_smoothingWeight=0"


def alert_markdown(alert: Alert) -> str:
    """Render an alert as the markdown shown in TensorBoard's Text tab."""
    value = f"{alert.value:.6g}" if math.isfinite(alert.value) else str(alert.value)
    if getattr(alert, "status", "fired") == "resolved":  # not an alert header: readers do not count it as fired
        text = f"**Resolved** ({alert.severity}) at step {alert.step}: `{alert.rule}` on `{alert.key}` = {value}"
        return text + (f"\n\n{alert.message}" if alert.message else "")
    text = (
        f"**{alert.severity.upper()}** at step {alert.step}: `{alert.rule}` on `{alert.key}` = {value}"
        f" (action: {alert.action})"
    )
    if alert.message:
        text += f"\n\n{alert.message}"
    return text


class TensorBoardSink(Sink):
    """Write scalars, histograms and alerts to TensorBoard.

    * Scalars: ``add_scalar(key, value, step)``; histograms: ``add_histogram`` (non-finite values are left
      out, since a histogram cannot bin them; the NaN itself is caught by the non-finite alert rule).
    * Alerts: markdown text under the tag ``<prefix>/alerts`` at the alert's step (Text tab), written at
      :meth:`flush`, one text per step holding all of that step's alerts.
    * Keys are written in order of importance (:mod:`spherewatch.keys`); the first point of every known tag
      carries a one-line description (what it measures, its collapsed and its healthy value), shown by
      TensorBoard next to the chart.
    * Where alerts fired, at every evaluation step (written at :meth:`flush`, once the step's alerts are in): the alert
      count ``<prefix>/alerts/count`` (cumulative number of fired collapse alerts, 0 from the first evaluation) and
      the alert level ``<prefix>/alerts/level`` (:func:`alert_level_key`: 0 while no alert is open, else the rank of
      the worst open one, 2 warning, 3 critical). One point per evaluation, not only at alert steps, so both read as
      steps that rise where an alert fired, over the same steps as the metrics, and TensorBoard's default
      "ignore outliers in chart scaling" (on, kept in the browser) does not cut them: an alert that is rare among the
      points (a 1 at one step in a hundred) would be, so the level stays up while the alert is open.
    * A custom-scalars layout (Custom Scalars tab), written once with the first spherewatch keys: categories
      "Collapse overview" (uniformity, effective rank, mean cosine, alignment, the host's training loss, the alert
      level, the alert count), "Spectrum" and "Health checks" (closed by default); one multi-line chart per metric
      whose regex gathers every tap of that metric (chart ``uniformity`` plots ``^spherewatch/[^/]+/uniformity$``).
      Metrics first logged later still appear in the Scalars tab, just not in that layout. Open it with
      :func:`custom_scalars_url` (smoothing off: TensorBoard smooths every chart by 0.6 unless the URL says otherwise).

    Reusing the host's writer (Lightning's ``TensorBoardLogger.experiment``, Hugging Face's
    ``TensorBoardCallback.tb_writer``) keeps everything in the run's own event files: pass it as ``writer``.
    Anything with ``add_scalar``/``add_histogram``/``add_text``/``flush`` works. The host owns that writer:
    :meth:`close` flushes it and never closes it. A host that writes its own custom-scalars layout can
    pass ``custom_scalars=False``.

    A writer this sink opens is flushed after every call, so a write error (disk full, folder gone) is raised
    by the call that failed and :class:`~spherewatch.sinks.ResilientSink` keeps that record. A writer that
    failed is replaced by a new one (a new event file in ``log_dir``) at the next call, so the sink recovers
    once the folder is writable again. Folders it creates are ``0o755`` and its event files lose group and
    world write permission, whatever the umask.

    Threads: the Monitor calls this sink from its one writer thread. ``SummaryWriter.add_scalar/add_histogram/
    add_text`` only put events on the writer's own thread-safe queue (drained by its own thread) and ``flush`` waits
    for it, so a host writer the training thread logs to at the same time is safe to share.

    Args:
        log_dir: folder for a new ``SummaryWriter`` (default ``runs/spherewatch``); ignored with ``writer``.
        writer: an existing writer to log through.
        prefix: the key prefix (category of the custom-scalars layout, tag prefix of alerts).
        custom_scalars: write the custom-scalars layout (when the writer has ``add_custom_scalars``).

    Raises:
        ModuleNotFoundError: no ``writer`` given and tensorboard is not installed.
        TypeError: ``writer`` lacks one of the methods above.

    Example::

        sink = TensorBoardSink("runs/exp1")
        sink.log_scalars(100, {"spherewatch/uniformity": -3.41})
        sink.close()
    """

    name = "tensorboard"
    supports_params = True

    def __init__(
        self,
        log_dir: str | None = None,
        *,
        writer: Any = None,
        prefix: str = "spherewatch",
        custom_scalars: bool = True,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self._custom_scalars = custom_scalars
        self._layout_written = False
        self._pending_alerts: dict[int, list[tuple[float, str]]] = {}
        # what is logged (spherewatch.keys): descriptions on first points, the alert counter
        self._described: set[str] = set()
        self._counted = SeenAlerts()  # the latest KEEP_ALERT_IDS fired collapse alerts counted
        # the alert count and level: evaluation steps and alert events not written yet, and the state written so far
        self._pending_evals: dict[int, float | None] = {}
        self._pending_events: dict[int, list[tuple[bool, Alert]]] = {}  # step -> [(fired, alert)]
        self._fired_total = 0
        self._open_alerts: dict[tuple[str, str], str] = {}
        self._hparams: dict[str, Any] = {}
        self._hparams_written = False
        if writer is not None:
            missing = [m for m in _WRITER_METHODS if not callable(getattr(writer, m, None))]
            if missing:
                raise TypeError(
                    f"`writer` must be a SummaryWriter-like object with {', '.join(_WRITER_METHODS)}; "
                    f"{type(writer).__name__} lacks {', '.join(missing)}. Pass a "
                    "torch.utils.tensorboard.SummaryWriter, or log_dir=... to open one."
                )
            if log_dir is not None:
                logger.debug("TensorBoardSink: log_dir=%r ignored, logging through the given writer.", log_dir)
            self._writer = writer
            self._owns_writer = False
            self.log_dir = getattr(writer, "log_dir", None)
        else:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ModuleNotFoundError(
                    "TensorBoardSink needs `tensorboard`: pip install 'spherewatch[tensorboard]'."
                ) from err
            self.log_dir = log_dir or "runs/spherewatch"
            self._summary_writer = SummaryWriter
            self._owns_writer = True
            self._broken = False
            self._writer = self._open_writer()

    def _open_writer(self) -> Any:
        """A new ``SummaryWriter`` on ``log_dir``: folders created ``0o755``, the event file not group/world
        writable (SummaryWriter would create them ``0o777``/``0o666`` less the umask)."""
        make_private_dirs(self.log_dir)
        writer = self._summary_writer(log_dir=self.log_dir)
        event_writer = getattr(getattr(writer, "file_writer", None), "event_writer", None)
        path = getattr(event_writer, "_file_name", None)
        if isinstance(path, str) and os.path.exists(path):
            mode = os.stat(path).st_mode & 0o7777
            if mode & 0o022:
                os.chmod(path, mode & ~0o022)
        return writer

    def _writing(self, write: Any) -> None:
        """Run ``write()``; an owned writer is replaced first if it failed before, and flushed after, so that
        its (asynchronous) write errors surface here."""
        if not self._owns_writer:
            write()
            return
        if self._broken:
            try:
                self._writer.close()
            except Exception:  # the failed writer may fail to close too
                pass
            self._writer = self._open_writer()  # raises while log_dir is still unusable
            self._broken = False
            logger.info("TensorBoardSink: opened a new event file in %s after a write error.", self.log_dir)
        try:
            write()
            self._writer.flush()
        except Exception:
            self._broken = True
            raise

    @property
    def writer(self) -> Any:
        """The underlying writer."""
        return self._writer

    def layout(self, keys: list[str]) -> dict[str, dict[str, list[Any]]]:
        """The custom-scalars layout for ``keys`` as ``{category: {chart title: ["Multiline", [regex]]}}``.

        Categories follow :data:`spherewatch.keys.CATEGORIES` ("Collapse overview", "Spectrum", "Health
        checks"); charts follow the catalogue's priority, one per metric with a line per tap, titled with the
        catalogue's short title. "Collapse overview" always holds the host's training loss (any tag outside the
        prefix matching :data:`spherewatch.keys.LOSS_PATTERN`, e.g. ``train/loss``), the alert level and the alert
        count.
        """
        from spherewatch.keys import ALERTS_INFO, CATEGORIES, LOSS_INFO, LOSS_PATTERN, describe, order_keys

        prefix = self.prefix.rstrip("/")
        categories: dict[str, dict[str, list[Any]]] = {c: {} for c in CATEGORIES}
        overview = categories[CATEGORIES[0]]
        for key in order_keys(keys, prefix):
            parts = split_key(key, prefix)
            if parts is None:
                continue
            info = describe(key, prefix)
            metric = parts[1]
            title = info.title if info is not None else metric
            category = info.category if info is not None else CATEGORIES[-1]
            if info is not None and info.metric == "spectrum":
                continue  # a histogram: shown in the Histograms/Distributions tabs
            # both key schemes: <prefix>/<metric> (the default tap) and <prefix>/<tap>/<metric>, one line per tap
            pattern = f"^{re.escape(prefix)}/(?:{_TAP_SEGMENT}/)?{re.escape(metric)}$"
            categories[category].setdefault(title, ["Multiline", [pattern]])
        overview[LOSS_INFO.title] = ["Multiline", [f"(?!{re.escape(prefix)}/)" + LOSS_PATTERN.lstrip("^")]]
        overview[ALERT_LEVEL_TITLE] = ["Multiline", [f"^{re.escape(alert_level_key(prefix))}$"]]
        overview[ALERTS_INFO.title] = ["Multiline", [f"^{re.escape(prefix)}/alerts/count$"]]
        return {c: charts for c, charts in categories.items() if charts}

    def _proto_file_writer(self) -> Any:
        """The event file writer of a torch ``SummaryWriter`` (which takes tensorboard's own protos: closed categories,
        descriptions); ``None`` for other writers (tensorboardX has protos of its own), which get the plain calls."""
        if not type(self._writer).__module__.startswith("torch.utils.tensorboard"):
            return None
        get = getattr(self._writer, "_get_file_writer", None)
        return get() if callable(get) else None

    def _layout_proto(self, keys: list[str]) -> Any:
        from tensorboard.plugins.custom_scalar import layout_pb2

        from spherewatch.keys import CATEGORIES

        categories = []
        for title, charts in self.layout(keys).items():
            categories.append(layout_pb2.Category(
                title=title, closed=title == CATEGORIES[-1],  # health checks: closed by default
                chart=[layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=regexes))
                       for name, (_, regexes) in charts.items()],
            ))
        return layout_pb2.Layout(category=categories)

    def _write_layout_once(self, keys: list[str]) -> None:
        if self._layout_written:
            return
        self._layout_written = True  # once, even if this host writer has no custom-scalars support
        if not self._custom_scalars:
            return
        file_writer = self._proto_file_writer()
        if file_writer is not None:  # torch's SummaryWriter: the layout proto itself (categories can be closed)
            from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
            from tensorboard.compat.proto.tensor_pb2 import TensorProto
            from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

            tensor = TensorProto(dtype="DT_STRING", string_val=[self._layout_proto(keys).SerializeToString()],
                                 tensor_shape=TensorShapeProto())
            metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
            file_writer.add_summary(Summary(value=[
                Summary.Value(tag="custom_scalars__config__", tensor=tensor, metadata=metadata)]))
        elif callable(getattr(self._writer, "add_custom_scalars", None)):
            layout = self.layout(keys)
            if layout:
                self._writer.add_custom_scalars(layout)

    def _scalar_summary(self, items: list[tuple[str, float]]) -> Any:
        """One ``Summary`` with every value of the step. A tag's first value also goes out once as a tensor-style
        scalar carrying the tag's one-line description, placed before it: TensorBoard takes a tag's metadata from its
        first value, and its default (fast) loader keeps a description only on tensor-style values. Every point stays
        a classic ``simple_value`` (what ``EventAccumulator.Scalars`` and other readers expect)."""
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

        from spherewatch.keys import describe

        values = []
        for key, value in items:
            if key not in self._described:
                self._described.add(key)
                info = describe(key, self.prefix)
                if info is not None:
                    metadata = SummaryMetadata(
                        summary_description=info.one_line,
                        plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"),
                    )
                    tensor = TensorProto(dtype="DT_FLOAT", float_val=[value], tensor_shape=TensorShapeProto())
                    values.append(Summary.Value(tag=key, tensor=tensor, metadata=metadata))
            values.append(Summary.Value(tag=key, simple_value=value))
        return Summary(value=values)

    def _write_described(self, key: str, value: float, step: int, wall_time: float | None, description: str) -> None:
        """One point of ``key`` carrying ``description`` (torch's writer: as :meth:`_scalar_summary` does), else a plain
        ``add_scalar``."""
        file_writer = self._proto_file_writer()
        if file_writer is None:
            self._writer.add_scalar(key, value, global_step=step, walltime=wall_time)
            return
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

        metadata = SummaryMetadata(summary_description=description,
                                   plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
        tensor = TensorProto(dtype="DT_FLOAT", float_val=[value], tensor_shape=TensorShapeProto())
        file_writer.add_summary(Summary(value=[Summary.Value(tag=key, tensor=tensor, metadata=metadata),
                                               Summary.Value(tag=key, simple_value=value)]), step, wall_time)

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """Every key in order of importance (:func:`spherewatch.keys.order_keys`), a tag's first point with its
        description. The first call holding spherewatch keys also writes the custom-scalars layout; a call holding
        them is an evaluation: the alert count and level get a point at its step (at :meth:`flush`, once the step's
        alerts are in, so a healthy run shows 0, not nothing)."""
        from spherewatch.keys import order_keys

        self._check_open()
        values = {str(k): float(v) for k, v in scalars.items()}
        items = [(k, values[k]) for k in order_keys(values, self.prefix)]
        own = any(split_key(k, self.prefix) is not None for k, _ in items)

        def write() -> None:
            if own:
                self._write_layout_once([k for k, _ in items])
                self._write_hparams([k for k, _ in items])
            file_writer = self._proto_file_writer()
            if file_writer is not None:
                file_writer.add_summary(self._scalar_summary(items), int(step), wall_time)
            else:
                for key, value in items:
                    self._writer.add_scalar(key, value, global_step=int(step), walltime=wall_time)
            if own:
                self._pending_evals.setdefault(int(step), wall_time)

        self._writing(write)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Run parameters as a markdown table in the Text tab: tag ``<prefix>/params`` (the Monitor's configuration,
        ``spherewatch.*``) or ``hparams`` (the host's), one text per call at step 0."""
        self._check_open()
        if not params:
            return
        own = all(str(k).startswith(f"{self.prefix.rstrip('/')}.") for k in params)
        tag = f"{self.prefix.rstrip('/')}/params" if own else "hparams"
        rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in params.items())
        self._writing(lambda: self._writer.add_text(tag, "| parameter | value |\n|---|---|\n" + rows, global_step=0))
        if not own:  # the host's hyperparameters also go to the HParams tab, beside the overview metrics
            self._hparams.update({str(k): v for k, v in params.items()})

    def _write_hparams(self, keys: list[str]) -> None:
        """The HParams tab: this run's hyperparameters with the overview metrics (their latest values) as columns, so
        runs compare side by side. Written once, with the first spherewatch values (torch's SummaryWriter only)."""
        from spherewatch.keys import CATEGORIES, alert_count_key, describe

        file_writer = self._proto_file_writer()
        if not self._hparams or self._hparams_written or file_writer is None:
            return
        self._hparams_written = True
        from torch.utils.tensorboard.summary import hparams

        metrics = [k for k in keys if split_key(k, self.prefix) is not None
                   and getattr(describe(k, self.prefix), "category", None) == CATEGORIES[0]]
        metrics.append(alert_count_key(self.prefix))
        values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self._hparams.items()}
        for summary in hparams(values, {k: 0.0 for k in dict.fromkeys(metrics)}):
            file_writer.add_summary(summary)

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: float | None = None) -> None:
        """``add_histogram`` of the finite values.

        Raises:
            ValueError: no finite value to plot.
        """
        self._check_open()
        arr = as_float_array(values)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            raise ValueError(
                f"Cannot log histogram {key!r} at step {step}: none of its {arr.size} values is finite."
            )
        self._writing(lambda: self._writer.add_histogram(str(key), finite, global_step=int(step), walltime=wall_time))

    def log_alert(self, alert: Alert) -> None:
        """Queue the alert's markdown; :meth:`flush` writes one text per step under ``<prefix>/alerts``, and the
        cumulative count of fired alerts under ``<prefix>/alerts/count`` (as in MLflow).

        TensorBoard's default (fast) loader serves one text per tag and step, so several alerts of one step are
        joined into one text instead of hiding each other.
        """
        self._check_open()
        self._pending_alerts.setdefault(int(alert.step), []).append((alert.time, alert_markdown(alert)))
        facts = alert_facts(alert)
        if not facts.counted:  # a fault or a change of regime: listed, never counted
            return
        if facts.resolved:
            self._pending_events.setdefault(int(alert.step), []).append((False, alert))
        elif self._counted.add(facts.id):  # a fired collapse alert, counted once (a replayed one is not counted again)
            self._pending_events.setdefault(int(alert.step), []).append((True, alert))

    def _alert_points(self) -> tuple[list[tuple[int, float | None, int, int]], int, dict[tuple[str, str], str]]:
        """``(step, wall time, count, level)`` at every evaluation and alert step not written yet, in step order, and
        the count and open alerts after them. A step's alerts count at that step (the Monitor logs an evaluation's
        scalars, then its alerts, then flushes)."""
        from spherewatch.alerts.verdict import severity_rank

        count, open_alerts = self._fired_total, dict(self._open_alerts)
        points = []
        for step in sorted(set(self._pending_evals) | set(self._pending_events)):
            events = self._pending_events.get(step, [])
            for fired, alert in events:
                if fired:
                    count += 1
                    open_alerts[(alert.rule, alert.key)] = str(alert.severity)
                else:
                    open_alerts.pop((alert.rule, alert.key), None)
            when = self._pending_evals.get(step)
            if when is None and events:
                when = max(alert.time for _, alert in events)
            level = max((severity_rank(s) for s in open_alerts.values()), default=0)
            points.append((step, when, count, level))
        return points, count, open_alerts

    def _write_alerts(self) -> None:
        from spherewatch.keys import ALERTS_INFO, alert_count_key

        points, count, open_alerts = self._alert_points()
        described = {alert_count_key(self.prefix): ALERTS_INFO.one_line,
                     alert_level_key(self.prefix): _ALERT_LEVEL_DESCRIPTION}
        for step, when, fired, level in points:
            for key, value in zip(described, (fired, level)):
                if key not in self._described:  # its first point carries what it means (Scalars tab)
                    self._described.add(key)
                    self._write_described(key, float(value), step, when, described[key])
                else:
                    self._writer.add_scalar(key, float(value), global_step=step, walltime=when)
        for step, items in sorted(self._pending_alerts.items()):
            self._writer.add_text(
                f"{self.prefix.rstrip('/')}/alerts", "\n\n---\n\n".join(text for _, text in items),
                global_step=step, walltime=max(t for t, _ in items),
            )
        self._writer.flush()
        # kept until written: a failed flush writes them again to the next writer
        self._pending_alerts, self._pending_evals, self._pending_events = {}, {}, {}
        self._fired_total, self._open_alerts = count, open_alerts

    def flush(self) -> None:
        """Write queued alerts and flush the writer's event files."""
        if not self._closed:
            self._writing(self._write_alerts)

    def close(self) -> None:
        """Flush; close the writer only if this sink opened it. Idempotent."""
        if self._closed:
            return
        self._writing(self._write_alerts)
        if self._owns_writer:
            self._writer.close()
        self._closed = True

    def __repr__(self) -> str:
        return f"TensorBoardSink(log_dir={self.log_dir!r}, owns_writer={self._owns_writer}, closed={self._closed})"
