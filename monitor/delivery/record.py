"""The records the delivery package carries, and their one versioned codec (a JSON line each).

Four record types, in the manner of MLflow's typed ``RunBatch``:

* :class:`Scalars` -- one step's scalars (``{key: value}``);
* :class:`Histogram` -- one 1-D distribution (a spectrum) under one key;
* :class:`AlertEvent` -- one alert (fired, reminded or resolved);
* :class:`Evaluation` -- one evaluation's scalars, spectra and alerts together, numbered (``seq``) by the writer that
  queued it; ``only`` restricts it to some of the run's sinks (those that lacked it when a close timed out).

Every spool line is ``encode(record)`` and is read back by :func:`decode`: one JSON object with the format version
``"v"`` and the record kind ``"op"``. Non-finite floats are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
(:func:`encode_float`; JSON has no literal for them), the same as in the JSONL sink's file and the MLflow sink's JSON
artifacts. Lines written by spherewatch 0.1 carry no ``"v"``: a sink's spool line had ``"op"`` already, an overflow
line of the writer's queue had ``"seq"``; both still decode. A line of a newer format raises
:class:`NewerFormatError` (the reader refuses the file and names it, never rewrites it).

Example:
    >>> rec = Scalars(3, 1700000000.0, {"spherewatch/uniformity": float("nan")})
    >>> line = encode(rec)
    >>> line
    b'{"v":1,"op":"scalars","step":3,"time":1700000000.0,"values":{"spherewatch/uniformity":"NaN"}}\\n'
    >>> decode(line).values
    {'spherewatch/uniformity': nan}
    >>> decode(b'{"seq":0,"step":5,"time":1.0,"values":{"a":1},"hists":{},"alerts":[]}').step  # a 0.1 overflow line
    5
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from spherewatch.alerts.alert import Alert

__all__ = [
    "FORMAT_VERSION", "AlertEvent", "Evaluation", "Histogram", "NewerFormatError", "Record", "Scalars",
    "alert_from_json", "alert_to_json", "decode", "decode_float", "describe", "dumps_line", "encode", "encode_float",
]

#: Version of the spool line format written by :func:`encode` (0: spherewatch 0.1, no ``"v"`` field).
FORMAT_VERSION = 1

# JSON has no NaN/Infinity literals (Python's json module writes them, but other parsers reject them), so non-finite
# floats are written as these strings. Python's own spellings ('nan', 'inf': older checkpoints) are read too.
_NONFINITE_TO_STR = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_STR_TO_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
                     "nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class NewerFormatError(ValueError):
    """A spool line written by a newer spherewatch (its ``"v"`` is above :data:`FORMAT_VERSION`)."""


def encode_float(x: Any) -> Union[float, str]:
    """``float(x)``, or the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` when it is not finite.

    Example:
        >>> encode_float(0.5), encode_float(float("nan")), encode_float(float("-inf"))
        (0.5, 'NaN', '-Infinity')
    """
    x = float(x)
    if math.isfinite(x):
        return x
    return _NONFINITE_TO_STR[repr(x)]


def decode_float(x: Any) -> float:
    """Inverse of :func:`encode_float`; ``null`` (``None``) also reads as NaN, and ``'nan'``/``'inf'``/``'-inf'``
    (Python's spellings) as themselves.

    Example:
        >>> decode_float("Infinity"), decode_float(2), decode_float("nan")
        (inf, 2.0, nan)
    """
    if x is None:
        return math.nan
    if isinstance(x, str):
        try:
            return _STR_TO_NONFINITE[x]
        except KeyError:
            raise ValueError(f"Expected a number or one of {sorted(_NONFINITE_TO_STR.values())}, got {x!r}.") from None
    return float(x)


def alert_to_json(alert: Alert) -> Dict[str, Any]:
    """``alert.to_dict()`` with its value through :func:`encode_float` (strict JSON)."""
    d = alert.to_dict()
    d["value"] = encode_float(d["value"])
    return d


def alert_from_json(d: Mapping[str, Any]) -> Alert:
    """Inverse of :func:`alert_to_json` (a missing value reads as NaN)."""
    fields = dict(d)
    fields["value"] = decode_float(fields.get("value"))
    return Alert.from_dict(fields)


def dumps_line(record: Mapping[str, Any]) -> bytes:
    """One record as a strict-JSON line (``allow_nan=False``: a stray NaN raises instead of corrupting)."""
    return (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


@dataclasses.dataclass(frozen=True)
class Scalars:
    """One step's scalars, measured at ``time`` (Unix seconds)."""

    step: int
    time: float
    values: Dict[str, float]


@dataclasses.dataclass(frozen=True)
class Histogram:
    """One 1-D distribution (``values``, float64) under ``key``."""

    step: int
    time: float
    key: str
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class AlertEvent:
    """One alert."""

    alert: Alert


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation's output, numbered ``seq`` by its writer; ``only``: the indices of the sinks it is for."""

    seq: int
    step: int
    time: float
    values: Dict[str, float]
    hists: Dict[str, List[float]]
    alerts: List[Alert]
    only: Optional[Tuple[int, ...]] = None


Record = Union[Scalars, Histogram, AlertEvent, Evaluation]


def _floats(values: Mapping[str, Any]) -> Dict[str, Any]:
    return {str(k): encode_float(v) for k, v in values.items()}


def encode(record: Record) -> bytes:
    """``record`` as one JSON line of format :data:`FORMAT_VERSION` (raises ``ValueError``/``TypeError`` on a value
    that is not a number)."""
    head: Dict[str, Any] = {"v": FORMAT_VERSION}
    if isinstance(record, Scalars):
        body = {"op": "scalars", "step": record.step, "time": record.time, "values": _floats(record.values)}
    elif isinstance(record, Histogram):
        body = {"op": "histogram", "step": record.step, "time": record.time, "key": record.key,
                "values": [encode_float(v) for v in np.asarray(record.values).tolist()]}
    elif isinstance(record, AlertEvent):
        body = {"op": "alert", "alert": alert_to_json(record.alert)}
    elif isinstance(record, Evaluation):
        body = {"op": "evaluation", "seq": record.seq, "step": record.step, "time": record.time,
                "values": _floats(record.values),
                "hists": {str(k): [encode_float(x) for x in v] for k, v in record.hists.items()},
                "alerts": [alert_to_json(a) for a in record.alerts]}
        if record.only is not None:
            body["only"] = list(record.only)
    else:
        raise TypeError(f"Expected a Scalars, Histogram, AlertEvent or Evaluation record, got {type(record).__name__}.")
    return dumps_line({**head, **body})


def decode(raw: Union[bytes, str]) -> Record:
    """The record of one line written by :func:`encode` (or by spherewatch 0.1).

    Raises:
        NewerFormatError: the line was written by a newer spherewatch.
        ValueError, KeyError, TypeError: the line is not a record (e.g. cut by a crash).
    """
    d = json.loads(raw)
    if not isinstance(d, dict):
        raise TypeError(f"Expected a JSON object, got {type(d).__name__}.")
    version = d.get("v", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise NewerFormatError(f"spool line of format v{version}, written by a newer spherewatch (this one reads up "
                               f"to v{FORMAT_VERSION})")
    op = d.get("op", "evaluation" if "seq" in d else None)
    if op == "scalars":
        return Scalars(int(d["step"]), float(d["time"]), {str(k): decode_float(v) for k, v in d["values"].items()})
    if op == "histogram":
        values = np.array([decode_float(v) for v in d["values"]], dtype=np.float64)
        return Histogram(int(d["step"]), float(d["time"]), str(d["key"]), values)
    if op == "alert":
        return AlertEvent(alert_from_json(d["alert"]))
    if op == "evaluation":
        only = d.get("only")
        return Evaluation(int(d["seq"]), int(d["step"]), float(d["time"]),
                          {str(k): decode_float(v) for k, v in d.get("values", {}).items()},
                          {str(k): [decode_float(x) for x in v] for k, v in d.get("hists", {}).items()},
                          [alert_from_json(a) for a in d.get("alerts", [])],
                          None if only is None else tuple(int(i) for i in only))
    raise ValueError(f"unknown spool record op {op!r}")


def describe(record: Record) -> str:
    """A few words on ``record`` for a log line (``"scalars record at step 3"``)."""
    if isinstance(record, AlertEvent):
        return f"alert at step {record.alert.step}"
    kind = {Scalars: "scalars", Histogram: "histogram", Evaluation: "evaluation"}[type(record)]
    return f"{kind} record at step {record.step}"
