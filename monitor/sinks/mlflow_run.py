"""Where an MLflow sink logs: tracking URIs (checked, compared, redacted, the default) and the host's active run.

Nothing here imports mlflow at import time; :func:`active_run` reads the run of a host that imported it already.

Example:
    >>> same_uri("http://127.0.0.1:5000/", "http://127.0.0.1:5000")
    True
    >>> active_run() is None or isinstance(active_run(), tuple)
    True
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping, Optional, Tuple

__all__ = ["DEFAULT_TRACKING_URI", "RUN_KEY_TAG", "TRACKING_SCHEMES", "active_run", "check_tracking_uri",
           "default_tracking_uri", "mark_training_experiment", "open_run", "redact_uri", "same_uri"]

logger = logging.getLogger("spherewatch.sinks")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: tag naming the Monitor run a run belongs to: a resumed run and a replay of a crashed run's spool find it by it
RUN_KEY_TAG = "spherewatch.run_key"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: URI schemes MLflow's tracking client accepts (``postgresql+psycopg2`` and the like count as ``postgresql``).
TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc",
                    "uc")


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


def same_uri(a: str, b: str) -> bool:
    """Whether two tracking URIs name the same store (``sqlite:///x.db`` vs its absolute form)."""
    def norm(uri: str) -> str:
        if uri.startswith("sqlite:///"):
            return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
        return uri.rstrip("/")

    return norm(a) == norm(b)


def default_tracking_uri() -> str:
    """The URI the user configured (``MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``), else SQLite."""
    import mlflow

    try:
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set
    except ImportError:  # pragma: no cover - private helper moved
        is_set = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    else:
        is_set = is_tracking_uri_set()
    return mlflow.get_tracking_uri() if is_set else DEFAULT_TRACKING_URI


def active_run(tracking_uri: Optional[str] = None, *, load: bool = False) -> Optional[Tuple[str, str]]:
    """``(run_id, tracking_uri)`` of MLflow's active run on this thread (thread-local in MLflow), or ``None``.

    The one place spherewatch looks for the host's run: a run the host started is logged to instead of opening a
    second one, on MLflow's current tracking URI; a different ``tracking_uri`` asked for is ignored, with a warning.

    Args:
        tracking_uri: the URI the user configured, if any (only for the warning).
        load: import mlflow when the host has not (otherwise a process without mlflow loaded has no active run).
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None and load:
        import mlflow
    if mlflow is None:
        return None
    run = mlflow.active_run()
    if run is None:
        return None
    current = mlflow.get_tracking_uri()
    if tracking_uri and not same_uri(tracking_uri, current):
        logger.warning("spherewatch: an MLflow run is active (%s on %s); logging to it instead of opening a second "
                       "run, and ignoring tracking_uri=%r.", run.info.run_id, redact_uri(current),
                       redact_uri(tracking_uri))
    return run.info.run_id, current


def open_run(client: Any, tracking_uri: str, *, experiment_name: str, run_name: Optional[str] = None,
             tags: Optional[Mapping[str, Any]] = None, artifact_location: Optional[str] = None,
             run_key: Optional[str] = None, find_run: bool = False) -> str:
    """The id of a run spherewatch opens itself: the run tagged ``run_key`` in the experiment (``find_run``: a resumed
    run, or the replay of a crashed run's spool), set running again, else a new run tagged with ``run_key``.

    Raises:
        ValueError: the experiment exists but is deleted (the message says how to restore it).
    """
    experiment_id = _experiment_id(client, experiment_name, artifact_location, tracking_uri)
    if find_run and run_key:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
        if runs:
            found = runs[0].info.run_id
            client.update_run(found, status="RUNNING")
            logger.info("MLflowSink: continuing run %s (spherewatch run %s) on %s.", found, run_key,
                        redact_uri(tracking_uri))
            return found
    run_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    if run_key:
        run_tags[RUN_KEY_TAG] = str(run_key)
    run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
    logger.info("MLflowSink: created run %s in experiment %r on %s.", run.info.run_id, experiment_name,
                redact_uri(tracking_uri))
    return run.info.run_id


def _experiment_id(client: Any, name: str, artifact_location: Optional[str], tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # created concurrently by another process: use theirs
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) on {redact_uri(tracking_uri)} "
            f"is deleted; restore it (`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or pass "
            "another experiment_name."
        )
    return experiment.experiment_id


def mark_training_experiment(client: Any, run_id: str) -> None:
    """Tag the run's experiment as model training (``mlflow.experimentKind``) unless it says otherwise, so MLflow 3's
    UI opens it on the runs and their charts instead of the empty GenAI overview. Best effort."""
    try:
        experiment_id = client.get_run(run_id).info.experiment_id
        experiment = client.get_experiment(experiment_id)
        if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    except Exception as err:  # an old server without the tag, a read-only experiment: only the default view
        logger.debug("MLflowSink: could not tag the experiment as model training: %s", err)
