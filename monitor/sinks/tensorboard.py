"""Stream metrics, spectra and alerts to TensorBoard (a new event file, or the host's writer)."""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from spherewatch.sinks.base import Sink, as_float_array, split_key
from spherewatch.sinks.jsonl import make_private_dirs

if TYPE_CHECKING:
    from spherewatch.alerts.alert import Alert

__all__ = ["TensorBoardSink", "alert_markdown"]

logger = logging.getLogger("spherewatch.sinks")

_WRITER_METHODS = ("add_scalar", "add_histogram", "add_text", "flush")


def alert_markdown(alert: Alert) -> str:
    """Render an alert as the markdown shown in TensorBoard's Text tab."""
    value = f"{alert.value:.6g}" if math.isfinite(alert.value) else str(alert.value)
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
    * A custom-scalars layout (Custom Scalars tab), written once on the first :meth:`log_scalars` call:
      category ``<prefix>``, one multi-line chart per metric whose regex gathers every tap of that metric
      (chart ``uniformity`` plots ``^spherewatch/[^/]+/uniformity$``). Metrics first logged later still
      appear in the Scalars tab, just not in that layout.

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
        sink.log_scalars(100, {"spherewatch/embeddings/uniformity": -3.41})
        sink.close()
    """

    name = "tensorboard"

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
        """The custom-scalars layout for ``keys``: one multi-line chart per metric, across taps."""
        charts: dict[str, list[Any]] = {}
        for key in keys:
            parts = split_key(key, self.prefix)
            if parts is None:
                continue
            metric = parts[1]
            pattern = f"^{re.escape(self.prefix.rstrip('/'))}/[^/]+/{re.escape(metric)}$"
            charts.setdefault(metric, ["Multiline", [pattern]])
        return {self.prefix.rstrip("/"): charts} if charts else {}

    def _write_layout_once(self, keys: list[str]) -> None:
        if self._layout_written:
            return
        self._layout_written = True  # once, even if this host writer has no custom-scalars support
        if not self._custom_scalars or not callable(getattr(self._writer, "add_custom_scalars", None)):
            return
        layout = self.layout(keys)
        if layout:
            self._writer.add_custom_scalars(layout)

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """``add_scalar`` for every key (the first call also writes the custom-scalars layout)."""
        self._check_open()
        items = [(str(k), float(v)) for k, v in scalars.items()]

        def write() -> None:
            self._write_layout_once([k for k, _ in items])
            for key, value in items:
                self._writer.add_scalar(key, value, global_step=int(step), walltime=wall_time)

        self._writing(write)

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
        """Queue the alert's markdown; :meth:`flush` writes one text per step under ``<prefix>/alerts``.

        TensorBoard's default (fast) loader serves one text per tag and step, so several alerts of one step are
        joined into one text instead of hiding each other.
        """
        self._check_open()
        self._pending_alerts.setdefault(int(alert.step), []).append((alert.time, alert_markdown(alert)))

    def _write_alerts(self) -> None:
        for step, items in sorted(self._pending_alerts.items()):
            self._writer.add_text(
                f"{self.prefix.rstrip('/')}/alerts", "\n\n---\n\n".join(text for _, text in items),
                global_step=step, walltime=max(t for t, _ in items),
            )
        self._writer.flush()
        self._pending_alerts = {}  # kept until written: a failed flush writes them again to the next writer

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
