"""Read a monitored run back (:func:`load_run`) from any of the places the Monitor writes to.

* a JSONL file written by :class:`~spherewatch.sinks.JsonlSink` (every value, every spectrum, every alert, params);
* a TensorBoard log dir (scalars, the ``spectrum`` histograms, the alert texts);
* an MLflow run id (metric histories, params, the ``spherewatch/alerts.json`` artifact and the spectra in
  ``spherewatch/spectra_history.json``, or only the latest in ``spherewatch/spectra.json`` for older runs).

tensorboard and mlflow are imported only when a source of theirs is read.

Example::

    from spherewatch.report import load_run
    run = load_run("runs/exp1/spherewatch.jsonl")
    run.scalars["spherewatch/uniformity"][-1]   # (300, -3.81)
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from spherewatch.alerts.alert import SEVERITIES, Alert
from spherewatch.report.records import decode_float, read_jsonl, redact_uri
from spherewatch.report.rundata import (
    ACCEPTED,
    DEFAULT_TRACKING_URI,
    RunData,
    dedup_sorted,
    is_spectrum_key,
    keep_scalar,
    no_records_error,
    own_keys,
    sort_alerts,
)

__all__ = ["load_run"]

logger = logging.getLogger("spherewatch.report")

ALERTS_ARTIFACT = "spherewatch/alerts.json"
SPECTRA_ARTIFACT = "spherewatch/spectra.json"
SPECTRA_HISTORY_ARTIFACT = "spherewatch/spectra_history.json"  # every spectrum (newer runs)
_TB_ALERT = re.compile(  # the header TensorBoardSink's alert_markdown writes; a text may hold several alerts
    r"\*\*(?P<severity>[A-Za-z]+)\*\* at step (?P<step>-?\d+): `(?P<rule>[^`]*)` on `(?P<key>[^`]*)` = "
    r"(?P<value>\S+) \(action: (?P<action>[^)]*)\)"
)
_MARKDOWN_RULE = re.compile(r"(\n\s*(-{3,}|\*{3,}|_{3,})\s*)+$")
_MAX_WALK_DIRS = 10000  # bound on the folders searched for event files under a TensorBoard log dir


def _jsonl_params(path: str) -> Dict[str, str]:
    """The ``params`` records of a JSONL file (later ones win)."""
    params: Dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if '"params"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("type") == "params" and isinstance(record.get("params"), dict):
                params.update({str(k): str(v) for k, v in record["params"].items()})
    return params



def _load_jsonl(path: str, prefix: str) -> RunData:
    try:
        data = read_jsonl(path)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path!r} is not a spherewatch JSONL file: it is not UTF-8 text ({err.reason} at byte {err.start}). "
            f"{ACCEPTED}."
        ) from err
    except IsADirectoryError as err:  # pragma: no cover - dispatch sends folders to TensorBoard
        raise ValueError(f"{path!r} is a folder, not a JSONL file.") from err
    scalars = {k: dedup_sorted(v) for k, v in data["scalars"].items() if keep_scalar(k, prefix)}
    spectra = {k: dedup_sorted(v) for k, v in data["histograms"].items() if is_spectrum_key(k, prefix)}
    if not own_keys(scalars, prefix) and not spectra:
        raise no_records_error(f"The JSONL file {path!r}", list(data["scalars"]) + list(data["histograms"]), prefix)
    full = os.path.abspath(path)
    folder = os.path.basename(os.path.dirname(full))
    # the Monitor's default file name says nothing: the run is its folder (runs/<run>/spherewatch.jsonl)
    name = folder if os.path.basename(full) == "spherewatch.jsonl" and folder else os.path.join(
        folder, os.path.basename(full))
    return RunData("jsonl", full, scalars, spectra, sort_alerts(data["alerts"]), name=name,
                   params=_jsonl_params(path))


def _has_event_file(names: List[str]) -> bool:
    return any("tfevents" in n for n in names)


def _tensorboard_run_dir(path: str) -> str:
    """``path`` if it holds event files, else its only sub-folder that does (a log dir with several runs
    is ambiguous: the error lists them)."""
    if _has_event_file(os.listdir(path)):
        return path
    runs: List[str] = []
    for i, (folder, dirs, files) in enumerate(os.walk(path)):
        dirs.sort()
        if i >= _MAX_WALK_DIRS:
            break
        if _has_event_file(files):
            runs.append(folder)
    if len(runs) == 1:
        return runs[0]
    if not runs:
        jsonl = sorted(f for f in os.listdir(path) if f.endswith(".jsonl"))
        hint = f" It holds {jsonl[0]!r}: pass that file instead." if jsonl else ""
        raise ValueError(
            f"The folder {path!r} holds no TensorBoard event files (events.out.tfevents.*).{hint} {ACCEPTED}."
        )
    names = ", ".join(repr(os.path.relpath(r, path)) for r in runs[:10]) + (", ..." if len(runs) > 10 else "")
    raise ValueError(
        f"The TensorBoard log dir {path!r} holds {len(runs)} runs: {names}. Pass one of them "
        f"(e.g. {os.path.join(path, os.path.relpath(runs[0], path))!r})."
    )


def _spectrum_from_histogram(histo: Any) -> np.ndarray:
    """Eigenvalues back from a TensorBoard histogram: each bucket's count placed at the bucket's centre.

    TensorBoard keeps only bucket counts (torch's exponential buckets, ~10% wide), so each value comes back to
    within its bucket; the largest and smallest come back exactly (``max``, ``min``). Sorted descending.
    """
    limits = np.asarray(histo.bucket_limit, dtype=np.float64)
    counts = np.rint(np.asarray(histo.bucket, dtype=np.float64)).astype(np.int64)
    lo, hi = float(histo.min), float(histo.max)
    values: List[float] = []
    for k in range(len(counts)):
        if counts[k] <= 0:
            continue
        left = limits[k - 1] if k > 0 else lo
        centre = 0.5 * (left + limits[k])
        values.extend([min(max(centre, lo), hi)] * int(counts[k]))
    arr = np.sort(np.asarray(values, dtype=np.float64))[::-1].copy()
    if arr.size:
        arr[0], arr[-1] = hi, lo
    return arr


def _alerts_from_text(text: str, step: int, wall_time: float, tag: str) -> List[Alert]:
    """The alerts in one TensorBoard text (one or several :func:`~spherewatch.sinks.tensorboard.alert_markdown`
    blocks; each block's message runs up to the next header). A text in another format is kept whole."""
    matches = list(_TB_ALERT.finditer(text))
    if not matches:
        return [Alert(rule="text", key=tag, value=math.nan, step=int(step), severity="info", message=text.strip(),
                      time=float(wall_time))]
    alerts = []
    for m, nxt in zip(matches, matches[1:] + [None]):
        message = _MARKDOWN_RULE.sub("", text[m.end():nxt.start() if nxt is not None else len(text)].rstrip())
        severity = m["severity"].lower()
        try:
            value = float(m["value"])
        except ValueError:
            value = math.nan
        alerts.append(Alert(
            rule=m["rule"], key=m["key"], value=value, step=int(m["step"]),
            severity=severity if severity in SEVERITIES else "warning",  # type: ignore[arg-type]
            message=message.strip(), time=float(wall_time),
            action=m["action"] if m["action"] in ("log", "stop") else "log",  # type: ignore[arg-type]
        ))
    return alerts


def _load_tensorboard(path: str, prefix: str) -> RunData:
    try:
        import tensorboard.backend.event_processing.event_accumulator as ea
    except ImportError as err:
        raise ModuleNotFoundError(
            "Reading a TensorBoard log dir needs `tensorboard`: pip install 'spherewatch[tensorboard]'."
        ) from err
    run_dir = _tensorboard_run_dir(path)
    acc = ea.EventAccumulator(run_dir, size_guidance={
        ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.COMPRESSED_HISTOGRAMS: 1, ea.IMAGES: 1, ea.AUDIO: 1,
    })
    acc.Reload()
    tags = acc.Tags()
    scalars = {
        tag: dedup_sorted([(e.step, float(e.value)) for e in acc.Scalars(tag)])
        for tag in tags.get("scalars", []) if keep_scalar(tag, prefix)
    }
    spectra = {
        tag: dedup_sorted([(e.step, _spectrum_from_histogram(e.histogram_value)) for e in acc.Histograms(tag)])
        for tag in tags.get("histograms", []) if is_spectrum_key(tag, prefix)
    }
    alerts: List[Alert] = []
    alert_tag = prefix.rstrip("/") + "/alerts"
    for tag in tags.get("tensors", []):
        if not (tag == alert_tag or tag.startswith(alert_tag + "/")):
            continue
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "text":
            continue
        for e in acc.Tensors(tag):
            for raw in e.tensor_proto.string_val:
                alerts.extend(_alerts_from_text(raw.decode("utf-8", "replace"), e.step, e.wall_time, tag))
    if not own_keys(scalars, prefix) and not spectra:
        found = list(tags.get("scalars", [])) + list(tags.get("histograms", []))
        raise no_records_error(f"The TensorBoard run {run_dir!r}", found, prefix)
    notes = []
    if spectra:
        notes.append(
            "TensorBoard stores the spectra as bucketed histograms: the eigenvalues are reconstructed to within "
            "one bucket (about 10%); the largest and smallest are exact."
        )
    full = os.path.abspath(run_dir)
    return RunData("tensorboard", full, scalars, spectra, sort_alerts(alerts), notes, os.path.basename(full))


def _not_found(run: str, why: str) -> FileNotFoundError:
    return FileNotFoundError(f"{run!r} is not an existing file or folder, and {why}. {ACCEPTED}.")


@contextlib.contextmanager
def _no_mlflow_progress_bar() -> Iterator[None]:
    """MLflow draws a progress bar on stderr for every download (noise for two small JSON files); turn it off
    for the duration unless the user chose a setting."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _read_json_artifact(client: Any, run_id: str, path: str, available: set) -> Any:
    if path not in available:
        return None
    with tempfile.TemporaryDirectory(prefix="spherewatch-report-") as tmp, _no_mlflow_progress_bar():
        local = client.download_artifacts(run_id, path, tmp)
        with open(local, encoding="utf-8") as f:
            return json.load(f)


def _load_mlflow(run_id: str, tracking_uri: Optional[str], prefix: str) -> RunData:
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{run_id!r} is not an existing file or folder, and reading it as an MLflow run id needs `mlflow`: "
            "pip install 'spherewatch[mlflow]'."
        ) from err
    uri = tracking_uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///"):].split("?", 1)[0]
        if not os.path.isfile(db):  # MlflowClient would create an empty store there
            raise _not_found(run_id, f"there is no MLflow store at {uri} to look it up as a run id "
                                     f"(no file {os.path.abspath(db)!r}; pass tracking_uri=... / --tracking-uri)")
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise _not_found(run_id, f"no MLflow run has this id on {redact_uri(uri)} ({err.error_code})") from err
    keys = sorted(k for k in run.data.metrics if keep_scalar(k, prefix))
    scalars: Dict[str, List[Tuple[int, float]]] = {}
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        scalars[key] = dedup_sorted([(m.step, float(m.value)) for m in history])

    alerts: List[Alert] = []
    spectra: Dict[str, List[Tuple[int, np.ndarray]]] = {}
    notes: List[str] = []
    history = None
    try:
        available = {a.path for a in client.list_artifacts(run_id, "spherewatch")}
        parts = sorted(p for p in available if p.startswith("spherewatch/alerts-") and p.endswith(".json"))
        records = [r for part in parts for r in (_read_json_artifact(client, run_id, part, available) or [])]
        for record in records + (_read_json_artifact(client, run_id, ALERTS_ARTIFACT, available) or []):
            record = dict(record)
            record["value"] = decode_float(record.get("value"))
            alerts.append(Alert.from_dict(record))
        history = _read_json_artifact(client, run_id, SPECTRA_HISTORY_ARTIFACT, available)
        latest = {} if history else (_read_json_artifact(client, run_id, SPECTRA_ARTIFACT, available) or {})
        for key, recs in (history or {k: [rec] for k, rec in latest.items()}).items():
            if is_spectrum_key(key, prefix):
                spectra[key] = dedup_sorted([
                    (int(rec["step"]), np.array([decode_float(v) for v in rec["values"]], dtype=np.float64))
                    for rec in recs])
    except (OSError, ValueError, KeyError, TypeError, MlflowException) as err:
        logger.warning("spherewatch report: could not read the artifacts of MLflow run %s: %s", run_id, err)
        notes.append(f"The artifacts of this run could not be read ({type(err).__name__}: {err}); "
                     "alerts and spectra may be missing.")
    if not own_keys(scalars, prefix) and not spectra:
        raise no_records_error(f"The MLflow run {run_id!r}", list(run.data.metrics), prefix)
    if spectra and not history:
        notes.append("This MLflow run keeps only its latest spectrum (artifact spherewatch/spectra.json; runs logged "
                     "by newer versions keep every one in spherewatch/spectra_history.json): use the run's JSONL file "
                     "or TensorBoard log dir for the spectrum over time.")
    experiment = client.get_experiment(run.info.experiment_id)
    name = f" ({run.info.run_name!r}, experiment {experiment.name!r})" if experiment is not None else ""
    source = f"MLflow run {run_id}{name} on {redact_uri(uri)}"
    return RunData("mlflow", source, scalars, spectra, sort_alerts(alerts), notes, run.info.run_name or run_id,
                   params=dict(run.data.params))


def load_run(run: str | os.PathLike[str], *, tracking_uri: Optional[str] = None,
             prefix: str = "spherewatch") -> RunData:
    """Read a monitored run back from a JSONL file, a TensorBoard log dir or an MLflow run id.

    The kind is told from ``run``: an existing file is read as JSONL, an existing folder as a TensorBoard
    log dir (or its only run sub-folder), anything else as an MLflow run id on ``tracking_uri``.

    Args:
        run: the JSONL file, TensorBoard log dir or MLflow run id.
        tracking_uri: MLflow store for a run id (default ``sqlite:///mlflow.db``).
        prefix: the key prefix the Monitor used.

    Returns:
        The run's scalars, spectra and alerts (:class:`RunData`).

    Raises:
        FileNotFoundError: ``run`` is no file, no folder and no run of the MLflow store.
        ValueError: the source holds no spherewatch values under ``prefix`` (or is not what it should be).
        ModuleNotFoundError: tensorboard / mlflow is needed to read that source and is missing.
        TypeError: ``run`` is not a string or path.
    """
    if not isinstance(run, (str, os.PathLike)):
        raise TypeError(f"`run` must be a path or an MLflow run id (str), got {type(run).__name__}: {run!r}.")
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise ValueError(f"`prefix` must be a non-empty string like 'spherewatch', got {prefix!r}.")
    run = os.fspath(run)
    if not run.strip():
        raise ValueError(f"`run` is empty. {ACCEPTED}.")
    if os.path.isfile(run):
        return _load_jsonl(run, prefix)
    if os.path.isdir(run):
        return _load_tensorboard(run, prefix)
    if os.sep in run or (os.altsep and os.altsep in run) or run.endswith((".jsonl", ".json")):
        raise FileNotFoundError(f"No such file or folder: {run!r}. {ACCEPTED}.")
    return _load_mlflow(run, tracking_uri, prefix)
