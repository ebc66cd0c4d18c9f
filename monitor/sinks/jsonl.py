"""An append-only, durable JSON-lines file of every logged value, and its reader."""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from spherewatch.delivery.files import make_private_dirs, open_private_append, write_all
from spherewatch.delivery.record import alert_from_json, alert_to_json, decode_float, dumps_line, encode_float
from spherewatch.sinks.base import Sink, as_float_array

if TYPE_CHECKING:
    from spherewatch.alerts.alert import Alert

# the float codec and the file helpers live in spherewatch.delivery; importable from here as before
__all__ = ["JsonlSink", "decode_float", "dumps_line", "encode_float", "make_private_dirs", "open_private_append",
           "read_jsonl", "write_all"]

logger = logging.getLogger("spherewatch.sinks")


class JsonlSink(Sink):
    """Append one JSON object per line to a file: a durable, dependency-free record of a run.

    Records::

        {"type": "scalars", "step": 10, "time": 1718000000.0, "values": {"spherewatch/uniformity": -3.4}}
        {"type": "histogram", "step": 10, "time": 1718000000.0, "key": "spherewatch/spectrum", "values": [...]}
        {"type": "alert", "rule": "...", "key": "...", "value": -0.9, "step": 10, "severity": "warning", ...}

    Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (JSON has no
    literal for them; a string keeps NaN and +/-inf apart, which ``null`` would not). :func:`read_jsonl`
    turns them back into floats.

    Durability: every record is written with a single unbuffered ``os.write`` (a crash of the process loses
    nothing already logged); :meth:`flush` and :meth:`close` also ``fsync`` (survives a machine crash).
    The file is opened in append mode, so several sinks over time (a resumed run) extend the same file.
    A file (or folder) deleted while the run writes to it is detected at the next record and recreated.
    It is created (with its parent folders) with mode ``0o644``: never world-writable.

    Args:
        path: the file to append to.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "run", "spherewatch.jsonl")
        >>> with JsonlSink(path) as sink:
        ...     sink.log_scalars(0, {"spherewatch/uniformity": -3.5})
        ...     sink.log_scalars(5, {"spherewatch/uniformity": float("nan")})
        >>> read_jsonl(path)["scalars"]["spherewatch/uniformity"]
        [(0, -3.5), (5, nan)]
    """

    name = "jsonl"
    supports_params = True

    def __init__(self, path: str | os.PathLike[str] = "spherewatch.jsonl") -> None:
        super().__init__()
        self.path = os.fspath(path)
        self._fd: int | None = open_private_append(self.path)

    def _reopen_if_deleted(self) -> None:
        """Recreate the file (and its folders) when it was deleted or its folder removed while open: writes to an
        unlinked file succeed and go nowhere."""
        assert self._fd is not None
        try:
            gone = os.fstat(self._fd).st_nlink == 0 or not os.path.exists(self.path)
        except OSError:
            gone = True
        if not gone:
            return
        fd = open_private_append(self.path)  # raises while the folder cannot be created: the record is retried
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._fd = fd
        logger.warning("JsonlSink: %s was deleted while the run wrote to it; recreated it (later records go to the "
                       "new file).", self.path)

    def _write(self, record: Mapping[str, Any]) -> None:
        self._check_open()
        data = dumps_line(record)  # encode fully before writing: a bad record writes nothing
        assert self._fd is not None
        self._reopen_if_deleted()
        view, written = memoryview(data), 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError:
            # disk full / file too large after a partial write: cut the partial line off, or the retried record
            # would be glued to it and the reader would skip both
            if written:
                try:
                    os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
                except OSError:
                    logger.warning("JsonlSink: could not remove a partly written line from %s.", self.path)
            raise

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """Append a ``scalars`` record (see :meth:`Sink.log_scalars`)."""
        values = {str(k): encode_float(v) for k, v in scalars.items()}
        t = time.time() if wall_time is None else float(wall_time)
        self._write({"type": "scalars", "step": int(step), "time": t, "values": values})

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: float | None = None) -> None:
        """Append a ``histogram`` record with every value (see :meth:`Sink.log_histogram`)."""
        arr = as_float_array(values)
        t = time.time() if wall_time is None else float(wall_time)
        self._write({
            "type": "histogram", "step": int(step), "time": t, "key": str(key),
            "values": [encode_float(v) for v in arr.tolist()],
        })

    def log_alert(self, alert: Alert) -> None:
        """Append an ``alert`` record: ``{"type": "alert", **alert.to_dict()}``."""
        self._write({"type": "alert", **alert_to_json(alert)})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Append a ``params`` record: ``{"type": "params", "time": ..., "params": {name: value}}`` (H11)."""
        self._check_open()
        self._write({"type": "params", "time": time.time(), "params": {str(k): str(v) for k, v in params.items()}})

    def flush(self) -> None:
        """``fsync`` the file (records are already written to the OS one by one)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """``fsync`` and close the file. Idempotent."""
        if self._fd is None:
            self._closed = True
            return
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
            self._closed = True

    def __repr__(self) -> str:
        return f"JsonlSink(path={self.path!r}, closed={self._closed})"


def read_jsonl(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :class:`JsonlSink` back into Python objects.

    Lines that are not valid JSON (e.g. the last line of a file whose writer was killed mid-write) are
    skipped with one warning; records of an unknown ``type`` are ignored.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        ``{"scalars": {key: [(step, value), ...]}, "histograms": {key: [(step, np.ndarray), ...]},
        "alerts": [Alert, ...]}``, each list in file order, non-finite values as float ``nan``/``inf``.
    """
    scalars: dict[str, list[tuple[int, float]]] = {}
    histograms: dict[str, list[tuple[int, np.ndarray]]] = {}
    alerts: list[Any] = []
    bad_lines: list[int] = []
    with open(os.fspath(path), "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                kind = record.get("type")
                if kind == "scalars":
                    step = int(record["step"])
                    for key, value in record["values"].items():
                        scalars.setdefault(key, []).append((step, decode_float(value)))
                elif kind == "histogram":
                    arr = np.array([decode_float(v) for v in record["values"]], dtype=np.float64)
                    histograms.setdefault(record["key"], []).append((int(record["step"]), arr))
                elif kind == "alert":
                    alerts.append(alert_from_json({k: v for k, v in record.items() if k != "type"}))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad_lines.append(lineno)
    if bad_lines:
        logger.warning(
            "read_jsonl(%r): skipped %d malformed line(s) (first: line %d); a truncated last line means the "
            "writer was killed mid-write.", os.fspath(path), len(bad_lines), bad_lines[0],
        )
    return {"scalars": scalars, "histograms": histograms, "alerts": alerts}
