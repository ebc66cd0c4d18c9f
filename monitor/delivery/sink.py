"""The :class:`Sink` interface every destination implements (what the delivery package delivers to), what a sink
supports (:func:`capabilities`), and the array helper sinks share. Importable as :mod:`spherewatch.sinks.base`."""
from __future__ import annotations

import abc
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

from spherewatch.errors import SpherewatchError

if TYPE_CHECKING:
    from typing_extensions import Self

    from spherewatch.alerts.alert import Alert

__all__ = ["Capabilities", "Sink", "as_float_array", "capabilities"]


class Sink(abc.ABC):
    """Where sampled metrics, spectra and alerts go (TensorBoard, MLflow, a JSONL file, memory).

    The Monitor calls, on rank zero only:

    * :meth:`log_scalars` once per sampling step, with every key of that step at once;
    * :meth:`log_histogram` for each 1-D distribution (e.g. an eigenvalue spectrum);
    * :meth:`log_alert` for each fired alert;
    * :meth:`flush` and finally :meth:`close` (idempotent; it flushes).

    Keys look like ``<prefix>/<metric>`` (``spherewatch/uniformity``, the default tap) or
    ``<prefix>/<tap>/<metric>`` (``spherewatch/encoder/uniformity``), see :mod:`spherewatch.keys`.

    Concrete sinks **raise** on failure and never swallow errors: fault handling (report once, queue,
    retry with backoff, spool to disk) lives in :class:`~spherewatch.sinks.ResilientSink`, which the
    Monitor wraps around every sink. A sink tells the wrapper which errors no retry can fix through
    :meth:`is_permanent_error` (a malformed record), so one bad record cannot block the queue forever.

    ``wall_time`` (Unix seconds), when a sink accepts it, is the time the values were measured; the
    wrapper passes the original time when it replays a record after an outage, so timestamps stay true
    and replays of the same record are identical (MLflow ignores exact duplicates).

    What a sink supports beyond these calls it declares as class attributes, read by the delivery package
    (:func:`capabilities`), never probed: :attr:`supports_params` (:meth:`log_params`), :attr:`supports_batches`
    (a native :meth:`log_scalars_batch`, up to :attr:`batch_limit` scalars per call), :attr:`supports_artifacts`
    (:meth:`log_artifacts` and :meth:`report_source`: the Monitor attaches the run's report to it at close).
    """

    #: Short, stable name used in logs and error reports ("tensorboard", "mlflow", "jsonl", "memory").
    name: str = "sink"
    #: :meth:`log_params` keeps run parameters (MLflow params, a TensorBoard text, a JSONL record).
    supports_params: ClassVar[bool] = False
    #: :meth:`log_scalars_batch` writes several steps in one call (a replayed backlog is sent in batches).
    supports_batches: ClassVar[bool] = False
    #: Most scalars in one :meth:`log_scalars_batch` call.
    batch_limit: ClassVar[int] = 1000
    #: :meth:`log_artifacts` stores a folder of files with the run, and :meth:`report_source` names the run.
    supports_artifacts: ClassVar[bool] = False

    def __init__(self) -> None:
        self._closed = False

    @abc.abstractmethod
    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """Log every scalar of one sampling step.

        Args:
            step: global step of the sample.
            scalars: ``{key: value}``, all keys of this step.
            wall_time: Unix time the values were measured; ``None`` means now.
        """

    @abc.abstractmethod
    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: float | None = None) -> None:
        """Log a 1-D distribution (e.g. the eigenvalue spectrum) under ``key``.

        Args:
            step: global step of the sample.
            key: log key, e.g. ``spherewatch/spectrum``.
            values: 1-D ``np.ndarray`` or list of floats.
            wall_time: Unix time the values were measured; ``None`` means now.
        """

    @abc.abstractmethod
    def log_alert(self, alert: Alert) -> None:
        """Record a fired :class:`~spherewatch.alerts.alert.Alert` (at ``alert.step``, ``alert.time``)."""

    def flush(self) -> None:  # noqa: B027 - optional hook: sinks without buffers need not override it
        """Push buffered data to its destination. The default does nothing."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Keep run parameters ``{name: value}`` (only where :attr:`supports_params`)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no run parameters (supports_params is False).")

    def log_scalars_batch(self, records: Sequence[tuple[int, Mapping[str, float], float | None]]) -> None:
        """Several steps' scalars ``[(step, values, wall_time), ...]``; the default calls :meth:`log_scalars` for each
        (a sink that does better sets :attr:`supports_batches`)."""
        for step, scalars, wall_time in records:
            self.log_scalars(step, scalars, wall_time=wall_time)

    def log_artifacts(self, local_dir: str, artifact_path: str) -> None:
        """Store the files of ``local_dir`` with the run, under ``artifact_path`` (only where
        :attr:`supports_artifacts`)."""
        raise NotImplementedError(f"{type(self).__name__} stores no artifacts (supports_artifacts is False).")

    def report_source(self) -> dict[str, Any] | None:
        """Where ``spherewatch report`` reads this sink's run back (``{"run": ..., "tracking_uri": ..., "prefix": ...}``,
        its pending files written first), or ``None`` when nothing of spherewatch's was logged. Only where
        :attr:`supports_artifacts`."""
        return None

    def close(self) -> None:
        """Flush and release resources. Idempotent: later calls do nothing."""
        if self._closed:
            return
        self.flush()
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has completed."""
        return self._closed

    def is_permanent_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the record itself is bad, so retrying it can never succeed.

        The default treats ``ValueError``, ``TypeError`` and :class:`~spherewatch.errors.SpherewatchError`
        as permanent and everything else (``OSError``, connection errors, server errors) as transient.
        """
        return isinstance(exc, (ValueError, TypeError, SpherewatchError))

    def _check_open(self) -> None:
        if self._closed:
            raise SpherewatchError(
                f"{type(self).__name__} is closed; create a new sink (or a new Monitor) to log again."
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, closed={self._closed})"


class Capabilities(NamedTuple):
    """What a sink supports (see :class:`Sink`); ``wall_time``: its ``log_scalars``/``log_histogram`` take it."""

    params: bool = False
    batches: bool = False
    batch_limit: int = 1000
    artifacts: bool = False
    wall_time: bool = True


def capabilities(sink: Any) -> Capabilities:
    """What ``sink`` supports: the class attributes a :class:`Sink` declares; an object that only has the sink methods
    (duck typing) gets the basic calls. Whether ``log_scalars`` takes ``wall_time`` is read from its signature.

    Example:
        >>> from spherewatch.sinks import MemorySink
        >>> capabilities(MemorySink())
        Capabilities(params=False, batches=False, batch_limit=1000, artifacts=False, wall_time=True)
    """
    wall_time = _accepts_wall_time(sink.log_scalars)
    if not isinstance(sink, Sink):
        return Capabilities(wall_time=wall_time)
    return Capabilities(bool(sink.supports_params), bool(sink.supports_batches), int(sink.batch_limit),
                        bool(sink.supports_artifacts), wall_time)


def _accepts_wall_time(method: Any) -> bool:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "wall_time" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def as_float_array(values: Any, *, what: str = "values") -> np.ndarray:
    """Copy ``values`` (array, tensor, list) into a fresh 1-D float64 numpy array.

    Raises:
        TypeError: when ``values`` is not numeric.
    """
    if hasattr(values, "detach"):  # torch tensor: no torch import needed here
        values = values.detach().cpu().numpy()
    try:
        arr = np.array(values, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Expected `{what}` to be a 1-D sequence of floats, got {type(values).__name__}: {values!r:.80}."
        ) from err
    return arr.reshape(-1)

