"""A self-contained HTML page and PNG figures of one monitored run, or several compared (``spherewatch report``).

The runs are read back from any of the places the Monitor writes to:

* a JSONL file written by :class:`~spherewatch.sinks.JsonlSink` (every value, every spectrum, every alert, params);
* a TensorBoard log dir (scalars, the ``spectrum`` histograms, the alert texts);
* an MLflow run id (metric histories, params, the ``spherewatch/alerts.json`` artifact and the spectra in
  ``spherewatch/spectra_history.json``, or only the latest in ``spherewatch/spectra.json`` for older runs).

The page opens with a verdict per run ("collapse detected at step 10, critical at step 20" / "healthy: no alerts
in 300 steps") and the collapse overview (uniformity, effective rank and the host's training loss when it was
logged). Figures: the metric curves in order of importance (every run on shared axes, alerts marked at their step
and coloured by severity, fixed rule thresholds as dashed lines), the trajectory in the alignment–uniformity plane
(Wang & Isola, 2020) and the eigenvalue spectrum over time (Jing et al., 2022), one colour scale for every run.
They are written as PNG files and embedded in ``report.html`` as data URIs, so the page works on its own (attach
it to an issue, mail it, open it offline); it reads at 900 px without horizontal scrolling.

matplotlib (``pip install 'spherewatch[report]'``) is imported only when a report is built, and only
through its object-oriented API with the Agg canvas: the user's pyplot backend and state are left alone.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import html
import json
import logging
import math
import os
import re
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from spherewatch._version import __version__
from spherewatch.alerts.alert import SEVERITIES, Alert
from spherewatch.keys import parse_key as split_key
from spherewatch.sinks.jsonl import decode_float, read_jsonl

__all__ = ["RunData", "build_report", "load_run", "overview_figure", "verdict"]

logger = logging.getLogger("spherewatch.report")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # same default as MLflowSink (not imported: keeps this module light)
ALERTS_ARTIFACT = "spherewatch/alerts.json"
SPECTRA_ARTIFACT = "spherewatch/spectra.json"
SPECTRA_HISTORY_ARTIFACT = "spherewatch/spectra_history.json"  # every spectrum (newer runs)
ACCEPTED = (
    "`spherewatch report` takes a JSONL file written by JsonlSink (e.g. runs/exp1/spherewatch.jsonl), a "
    "TensorBoard log dir (e.g. runs/exp1), or an MLflow run id (looked up on tracking_uri / --tracking-uri, "
    f"default {DEFAULT_TRACKING_URI})"
)
FIGURE_NAMES = ("overview.png", "metrics.png", "alignment_uniformity.png", "spectrum.png")
SEVERITY_COLORS = {"info": "#1f77b4", "warning": "#ff8c00", "critical": "#d62728"}
# Tap colours: distinct from the severity colours, so an alert line is never mistaken for a curve.
TAP_COLORS = ("#2a6f97", "#2b9348", "#6a4c93", "#8d6e63", "#00838f", "#c2185b", "#827717", "#37474f")
_TB_ALERT = re.compile(  # the header TensorBoardSink's alert_markdown writes; a text may hold several alerts
    r"\*\*(?P<severity>[A-Za-z]+)\*\* at step (?P<step>-?\d+): `(?P<rule>[^`]*)` on `(?P<key>[^`]*)` = "
    r"(?P<value>\S+) \(action: (?P<action>[^)]*)\)"
)
_MARKDOWN_RULE = re.compile(r"(\n\s*(-{3,}|\*{3,}|_{3,})\s*)+$")
_MAX_WALK_DIRS = 10000  # bound on the folders searched for event files under a TensorBoard log dir


@dataclasses.dataclass
class RunData:
    """What a report is made of, read back from one source.

    Attributes:
        kind: ``"jsonl"``, ``"tensorboard"`` or ``"mlflow"``.
        source: where it was read (file, folder, or MLflow run and store), for display.
        scalars: ``{key: [(step, value), ...]}`` sorted by step, one value per step (the last one recorded).
        spectra: ``{key: [(step, eigenvalues), ...]}`` sorted by step.
        alerts: alerts sorted by step (then severity, most severe first).
        notes: remarks shown on the page (e.g. how exact the spectra are).
        name: short name for the title (run folder, file, or MLflow run name).
        params: the run's parameters (the Monitor's ``spherewatch.*`` configuration, the host's hyperparameters)
            where the source keeps them (JSONL ``params`` records, MLflow params).

    Besides the ``<prefix>/<tap>/<metric>`` keys, ``scalars`` holds the host's loss when it was logged beside them
    (keys like ``train/loss``, see :data:`spherewatch.keys.LOSS_PATTERN`).
    """

    kind: str
    source: str
    scalars: Dict[str, List[Tuple[int, float]]]
    spectra: Dict[str, List[Tuple[int, np.ndarray]]]
    alerts: List[Alert]
    notes: List[str] = dataclasses.field(default_factory=list)
    name: str = ""
    params: Dict[str, str] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------- reading
def _dedup_sorted(points: List[Tuple[int, Any]]) -> List[Tuple[int, Any]]:
    """Sorted by step, keeping the last value recorded for a step (a resumed run appends to the same file)."""
    by_step: Dict[int, Any] = {}
    for step, value in points:
        by_step[int(step)] = value
    return sorted(by_step.items(), key=lambda kv: kv[0])


def _sort_alerts(alerts: List[Alert]) -> List[Alert]:
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return sorted(alerts, key=lambda a: (a.step, rank.get(a.severity, len(rank)), a.key, a.rule))


def _keep_scalar(key: str, prefix: str) -> bool:
    from spherewatch.keys import is_loss_key

    parts = split_key(key, prefix)
    if parts is None:
        return is_loss_key(key, prefix)  # the host's loss, logged beside the metrics
    return parts[0] != "alerts"  # <prefix>/alerts/count is the alert counter


def _own(keys: Any, prefix: str) -> List[str]:
    return [k for k in keys if split_key(k, prefix) is not None]


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


def _is_spectrum(key: str, prefix: str) -> bool:
    parts = split_key(key, prefix)
    return parts is not None and parts[1] == "spectrum"


def _no_records_error(what: str, found: List[str], prefix: str) -> ValueError:
    if found:
        shown = ", ".join(sorted(found)[:8]) + (", ..." if len(found) > 8 else "")
        return ValueError(
            f"{what} holds no spherewatch values under the prefix {prefix!r} (keys <prefix>/<tap>/<metric>); it "
            f"holds: {shown}. Pass the prefix the Monitor used (prefix=... / MonitorConfig.prefix)."
        )
    return ValueError(f"{what} holds no spherewatch records. {ACCEPTED}.")


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
    scalars = {k: _dedup_sorted(v) for k, v in data["scalars"].items() if _keep_scalar(k, prefix)}
    spectra = {k: _dedup_sorted(v) for k, v in data["histograms"].items() if _is_spectrum(k, prefix)}
    if not _own(scalars, prefix) and not spectra:
        raise _no_records_error(f"The JSONL file {path!r}", list(data["scalars"]) + list(data["histograms"]), prefix)
    full = os.path.abspath(path)
    folder = os.path.basename(os.path.dirname(full))
    # the Monitor's default file name says nothing: the run is its folder (runs/<run>/spherewatch.jsonl)
    name = folder if os.path.basename(full) == "spherewatch.jsonl" and folder else os.path.join(
        folder, os.path.basename(full))
    return RunData("jsonl", full, scalars, spectra, _sort_alerts(data["alerts"]), name=name,
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
        tag: _dedup_sorted([(e.step, float(e.value)) for e in acc.Scalars(tag)])
        for tag in tags.get("scalars", []) if _keep_scalar(tag, prefix)
    }
    spectra = {
        tag: _dedup_sorted([(e.step, _spectrum_from_histogram(e.histogram_value)) for e in acc.Histograms(tag)])
        for tag in tags.get("histograms", []) if _is_spectrum(tag, prefix)
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
    if not _own(scalars, prefix) and not spectra:
        found = list(tags.get("scalars", [])) + list(tags.get("histograms", []))
        raise _no_records_error(f"The TensorBoard run {run_dir!r}", found, prefix)
    notes = []
    if spectra:
        notes.append(
            "TensorBoard stores the spectra as bucketed histograms: the eigenvalues are reconstructed to within "
            "one bucket (about 10%); the largest and smallest are exact."
        )
    full = os.path.abspath(run_dir)
    return RunData("tensorboard", full, scalars, spectra, _sort_alerts(alerts), notes, os.path.basename(full))


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
    from spherewatch.sinks.mlflow import redact_uri

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
    keys = sorted(k for k in run.data.metrics if _keep_scalar(k, prefix))
    scalars: Dict[str, List[Tuple[int, float]]] = {}
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        scalars[key] = _dedup_sorted([(m.step, float(m.value)) for m in history])

    alerts: List[Alert] = []
    spectra: Dict[str, List[Tuple[int, np.ndarray]]] = {}
    notes: List[str] = []
    history = None
    try:
        available = {a.path for a in client.list_artifacts(run_id, "spherewatch")}
        for record in _read_json_artifact(client, run_id, ALERTS_ARTIFACT, available) or []:
            record = dict(record)
            record["value"] = decode_float(record.get("value"))
            alerts.append(Alert.from_dict(record))
        history = _read_json_artifact(client, run_id, SPECTRA_HISTORY_ARTIFACT, available)
        latest = {} if history else (_read_json_artifact(client, run_id, SPECTRA_ARTIFACT, available) or {})
        for key, recs in (history or {k: [rec] for k, rec in latest.items()}).items():
            if _is_spectrum(key, prefix):
                spectra[key] = _dedup_sorted([
                    (int(rec["step"]), np.array([decode_float(v) for v in rec["values"]], dtype=np.float64))
                    for rec in recs])
    except (OSError, ValueError, KeyError, TypeError, MlflowException) as err:
        logger.warning("spherewatch report: could not read the artifacts of MLflow run %s: %s", run_id, err)
        notes.append(f"The artifacts of this run could not be read ({type(err).__name__}: {err}); "
                     "alerts and spectra may be missing.")
    if not _own(scalars, prefix) and not spectra:
        raise _no_records_error(f"The MLflow run {run_id!r}", list(run.data.metrics), prefix)
    if spectra and not history:
        notes.append("This MLflow run keeps only its latest spectrum (artifact spherewatch/spectra.json; runs logged "
                     "by newer versions keep every one in spherewatch/spectra_history.json): use the run's JSONL file "
                     "or TensorBoard log dir for the spectrum over time.")
    experiment = client.get_experiment(run.info.experiment_id)
    name = f" ({run.info.run_name!r}, experiment {experiment.name!r})" if experiment is not None else ""
    source = f"MLflow run {run_id}{name} on {redact_uri(uri)}"
    return RunData("mlflow", source, scalars, spectra, _sort_alerts(alerts), notes, run.info.run_name or run_id,
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


# --------------------------------------------------------------------------------------------- verdict
def _fired(data: RunData) -> List[Alert]:
    """Collapse alerts that fired (no resolutions, no faults of the monitor itself, no foreign texts)."""
    return [a for a in data.alerts if getattr(a, "status", "fired") != "resolved"
            and getattr(a, "kind", "collapse") != "fault" and a.rule not in ("monitor_fault", "text")]


def _last_step(data: RunData, prefix: str) -> Optional[int]:
    steps = [s for k in _own(data.scalars, prefix) for s, _ in data.scalars[k]]
    return max(steps) if steps else None


def verdict(data: RunData, prefix: str = "spherewatch") -> str:
    """One line: ``collapse detected at step 10, critical at step 20`` or ``healthy: no alerts in 300 steps``.

    Example:
        >>> run = RunData("jsonl", "run.jsonl", {"spherewatch/uniformity": [(0, -3.9), (300, -3.8)]}, {}, [])
        >>> verdict(run)
        'healthy: no alerts in 300 steps'
    """
    fired = _fired(data)
    if not fired:
        last = _last_step(data, prefix)
        return f"healthy: no alerts in {last} steps" if last is not None else "healthy: no alerts"
    first = min(a.step for a in fired)
    text = f"collapse detected at step {first}"
    critical = [a.step for a in fired if a.severity == "critical"]
    if critical:
        text += f", critical at step {min(critical)}" if min(critical) != first else " (critical)"
    return text


def _threshold_lines(data: RunData) -> List[Tuple[str, str, str, float]]:
    """``(rule name, metric pattern, 'above'|'below', value)`` of the fixed thresholds among the run's rules: those
    the run logged (``spherewatch.rule.<name>`` params), else the default rules it names (``spherewatch.rules``),
    else the default rules."""
    from spherewatch.alerts.rules import RULE_ADAPTER, CollapseRule, ThresholdRule, default_rules

    rules: List[Any] = []
    logged = {k[len("spherewatch.rule."):]: v for k, v in data.params.items() if k.startswith("spherewatch.rule.")}
    for raw in logged.values():
        try:
            rules.append(RULE_ADAPTER.validate_python(json.loads(raw)))
        except (ValueError, TypeError):
            continue
    if not logged:
        names = data.params.get("spherewatch.rules")
        rules = [r for r in default_rules() if names is None or r.name in names.split(",")]
    lines = []
    for rule in rules:
        if isinstance(rule, ThresholdRule):
            for side in ("above", "below"):
                value = getattr(rule, side)
                if value is not None:
                    lines.append((str(rule.name), rule.metric, side, float(value)))
        elif isinstance(rule, CollapseRule) and not rule.relative:
            # the edge of the collapse zone |value - collapsed| <= margin, on the side the healthy values lie
            if rule.metric in _COLLAPSED_AT_TOP:
                lines.append((str(rule.name), rule.metric, "above", float(rule.collapsed - rule.margin)))
            else:
                lines.append((str(rule.name), rule.metric, "below", float(rule.collapsed + rule.margin)))
    return lines


#: metrics whose collapsed value is the top of their range (healthy values lie below it)
_COLLAPSED_AT_TOP = frozenset({"uniformity", "uniformity_pos", "mean_cosine", "dead_dimensions", "zero_norm_fraction"})


# --------------------------------------------------------------------------------------------- figures
RUN_COLORS = ("#2a6f97", "#8e44ad", "#2b9348", "#8d6e63", "#00838f", "#c2185b", "#827717", "#37474f")
TAP_STYLES = ("-", "--", ":", "-.")


def _metric_sort_key(metric: str) -> Tuple[int, str]:
    from spherewatch.keys import metric_rank

    return (metric_rank(metric), metric)


def _by_metric(keys: List[str], prefix: str) -> Dict[str, Dict[str, str]]:
    """``{metric: {tap: key}}`` in order of importance (:mod:`spherewatch.keys`)."""
    groups: Dict[str, Dict[str, str]] = {}
    for key in keys:
        parts = split_key(key, prefix)
        if parts is not None:
            groups.setdefault(parts[1], {})[parts[0]] = key
    return {m: dict(sorted(groups[m].items())) for m in sorted(groups, key=_metric_sort_key)}


def _loss_keys(data: RunData, prefix: str) -> List[str]:
    return sorted(k for k in data.scalars if split_key(k, prefix) is None)


def _finite_xy(points: List[Tuple[int, float]]) -> Tuple[np.ndarray, np.ndarray]:
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    y[~np.isfinite(y)] = np.nan  # a gap in the curve; the non-finite rule's alert marks the step
    return x, y


def _new_figure(width: float, height: float) -> Any:
    """A figure on an Agg canvas, outside pyplot (no global state, no backend switch). Margins are set by
    hand: constrained layout costs seconds on a figure of ~20 panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _inches_to_fraction(fig: Any, top: float, bottom: float, left: float, right: float) -> Dict[str, float]:
    """``subplots_adjust`` arguments for fixed margins in inches (a fixed look whatever the figure size)."""
    w, h = fig.get_size_inches()
    return {"top": 1 - top / h, "bottom": bottom / h, "left": left / w, "right": 1 - right / w}


def _save(fig: Any, path: str) -> None:
    fig.savefig(path, format="png", metadata={"Software": None}, facecolor="white")


def _title(metric: str) -> str:
    from spherewatch.keys import _BY_METRIC

    info = _BY_METRIC.get(metric)
    return info.title if info is not None else metric


def _steady_ylim(ax: Any, values: List[float], thresholds: List[float]) -> None:
    """Y limits that do not turn a flat curve into a zigzag: at least 20% of the largest magnitude, and every
    threshold line in view."""
    finite = [v for v in values + thresholds if math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    magnitude = max(abs(lo), abs(hi))
    span = max(hi - lo, 0.2 * magnitude, 1e-9 if magnitude > 0 else 1.0)
    mid = (lo + hi) / 2
    if hi - lo < span:
        lo, hi = mid - span / 2, mid + span / 2
    pad = 0.06 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)


def _panel(ax: Any, runs: List[RunData], metric: Optional[str], prefix: str, *, loss: bool = False) -> None:
    """One metric (or the host's loss) of every run on one axes: a colour per run, a line style per tap,
    the run's alerts on that metric as dots, fixed thresholds as dashed grey lines."""
    values: List[float] = []
    thresholds: List[float] = []
    for r, data in enumerate(runs):
        color = RUN_COLORS[r % len(RUN_COLORS)]
        if loss:
            series = {k: k for k in _loss_keys(data, prefix)}
        else:
            series = _by_metric(list(data.scalars), prefix).get(metric, {})
        for t, (_, key) in enumerate(sorted(series.items())):
            x, y = _finite_xy(data.scalars[key])
            ax.plot(x, y, color=color, ls=TAP_STYLES[t % len(TAP_STYLES)], lw=1.7,
                    marker="." if len(x) <= 120 else None, ms=4, zorder=2)
            values += [float(v) for v in y if math.isfinite(v)]
        if loss:
            continue
        for a in _fired(data):
            parts = split_key(a.key, prefix)
            if parts is not None and parts[1] == metric and math.isfinite(a.value):
                ax.scatter([a.step], [a.value], s=50, marker="o", color=SEVERITY_COLORS.get(a.severity, "black"),
                           edgecolors=color, linewidths=1.4, zorder=3)
    if not loss and runs:
        import fnmatch

        seen = set()
        for _, pattern, side, value in _threshold_lines(runs[0]):
            if fnmatch.fnmatchcase(metric or "", pattern) and (side, value) not in seen:
                seen.add((side, value))
                ax.axhline(value, color="#757575", ls="--", lw=1.0, zorder=1)
                ax.annotate(f"alert {side} {value:g}", (0.01, value), xycoords=("axes fraction", "data"),
                            textcoords="offset points", xytext=(0, 3), fontsize=8, color="#616161")
                thresholds.append(value)
    _steady_ylim(ax, values, thresholds)
    ax.set_title("training loss (host)" if loss else _title(metric or ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=9)


def _legend(fig: Any, runs: List[RunData], prefix: str, *, y: float = 1.0) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=RUN_COLORS[r % len(RUN_COLORS)], lw=2.5, label=_run_label(d, prefix))
               for r, d in enumerate(runs)]
    taps = sorted({t for d in runs for g in _by_metric(list(d.scalars), prefix).values() for t in g})
    if len(taps) > 1:
        handles += [Line2D([], [], color="#424242", ls=TAP_STYLES[i % len(TAP_STYLES)], lw=1.5, label=f"tap {t}")
                    for i, t in enumerate(taps)]
    severities = [s for s in SEVERITIES if any(a.severity == s for d in runs for a in _fired(d))]
    handles += [Line2D([], [], ls="", color=SEVERITY_COLORS[s], marker="o", markeredgecolor="black",
                       label=f"{s} alert") for s in severities]
    width, height = fig.get_size_inches()
    longest = max(len(h.get_label()) for h in handles)
    ncols = max(1, min(len(handles), int(width / (0.8 + 0.075 * longest))))
    rows = math.ceil(len(handles) / ncols)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, y), ncols=ncols, fontsize=10, frameon=False)
    fig.subplots_adjust(top=1 - (0.35 + 0.24 * rows) / height)  # room for the legend above the panels


def _run_label(data: RunData, prefix: str) -> str:
    return f"{data.name}: {verdict(data, prefix)}"


def overview_figure(runs: List[RunData], path: str, *, prefix: str = "spherewatch",
                    metrics: Tuple[str, ...] = ("uniformity", "effective_rank"), loss: bool = True) -> None:
    """The collapse overview: ``metrics`` (and the host's loss, when logged and ``loss``) of every run on shared
    axes, one panel each, in one row."""
    present = [m for m in metrics if any(m in _by_metric(list(d.scalars), prefix) for d in runs)]
    with_loss = loss and any(_loss_keys(d, prefix) for d in runs)
    n = max(1, len(present) + int(with_loss))
    fig = _new_figure(4.2 * n + 0.6, 4.0)
    axes = fig.subplots(1, n, squeeze=False)[0]
    fig.subplots_adjust(wspace=0.25, **_inches_to_fraction(fig, 0.55 + 0.25 * math.ceil(len(runs) / 4), 0.5, 0.55,
                                                              0.2))
    for ax, metric in zip(axes, present):
        _panel(ax, runs, metric, prefix)
        ax.set_xlabel("step", fontsize=9)
    if with_loss:
        _panel(axes[len(present)], runs, None, prefix, loss=True)
        axes[len(present)].set_xlabel("step", fontsize=9)
    _legend(fig, runs, prefix)
    _save(fig, path)


def _metrics_figure(runs: List[RunData], prefix: str, path: str) -> None:
    metrics: List[str] = []
    for d in runs:
        metrics += [m for m in _by_metric(list(d.scalars), prefix) if m not in metrics]
    metrics.sort(key=_metric_sort_key)
    n = len(metrics)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(4.2 * ncols, 2.8 * nrows + 0.7)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    fig.subplots_adjust(hspace=0.32, wspace=0.25, **_inches_to_fraction(fig, 0.85, 0.5, 0.55, 0.2))
    for i, metric in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        _panel(ax, runs, metric, prefix)
        if i + ncols >= n:  # the lowest panel of its column
            ax.set_xlabel("step", fontsize=9)
            ax.xaxis.set_tick_params(labelbottom=True)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    _legend(fig, runs, prefix)
    _save(fig, path)


def _alignment_uniformity_pairs(data: RunData, prefix: str) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{tap: (steps, alignment, uniformity)}`` over the steps where both are logged and finite."""
    groups = _by_metric(list(data.scalars), prefix)
    out = {}
    for tap, akey in groups.get("alignment", {}).items():
        ukey = groups.get("uniformity", {}).get(tap)
        if ukey is None:
            continue
        unif = dict(data.scalars[ukey])
        rows = [(s, a, unif[s]) for s, a in data.scalars[akey]
                if s in unif and math.isfinite(a) and math.isfinite(unif[s])]
        if rows:
            arr = np.array(rows, dtype=np.float64)
            out[tap] = (arr[:, 0], arr[:, 1], arr[:, 2])
    return out


def _alignment_uniformity_figure(runs: List[RunData], prefix: str, path: str) -> None:
    """Every run's trajectory in the alignment–uniformity plane on one axes per tap (a colour per run, the point
    size growing with the step)."""
    taps = sorted({t for d in runs for t in _alignment_uniformity_pairs(d, prefix)})
    n = len(taps)
    fig = _new_figure(5.6 * n, 4.8)
    axes = fig.subplots(1, n, squeeze=False)[0]
    fig.subplots_adjust(wspace=0.3, **_inches_to_fraction(fig, 0.7, 0.6, 0.8, 0.2))
    for ax, tap in zip(axes, taps):
        for r, data in enumerate(runs):
            pair = _alignment_uniformity_pairs(data, prefix).get(tap)
            if pair is None:
                continue
            steps, align, unif = pair
            color = RUN_COLORS[r % len(RUN_COLORS)]
            ax.plot(align, unif, color=color, lw=1.0, alpha=0.6, zorder=1)
            size = 12 + 48 * (steps - steps.min()) / max(float(steps.max() - steps.min()), 1.0)
            ax.scatter(align, unif, s=size, color=color, edgecolors="black", linewidths=0.3, zorder=2)
            for j, label in ((0, "start"), (len(steps) - 1, f"step {int(steps[-1])}")):
                ax.annotate(label, (align[j], unif[j]), textcoords="offset points", xytext=(6, 4), fontsize=8,
                            color=color)
        ax.set_xlabel("alignment (lower: positive pairs closer)", fontsize=9)
        ax.set_ylabel("uniformity (lower: more spread out)", fontsize=9)
        ax.set_title(f"tap {tap}: alignment vs uniformity", fontsize=10)
        ax.text(0.02, 0.02, "better: lower left; collapse: uniformity -> 0", transform=ax.transAxes, fontsize=8,
                color="#555555")
        ax.grid(True, alpha=0.3)
    _legend(fig, runs, prefix)
    _save(fig, path)


def _spectrum_matrix(series: List[Tuple[int, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    """``(steps, log10 eigenvalues (rank, step))``, eigenvalues sorted descending; <= 0 and missing are NaN."""
    steps = np.array([s for s, _ in series], dtype=np.float64)
    length = max((v.size for _, v in series), default=0)
    mat = np.full((length, len(series)), np.nan)
    for j, (_, values) in enumerate(series):
        v = np.sort(values[np.isfinite(values)])[::-1]
        mat[: v.size, j] = v
    with np.errstate(divide="ignore", invalid="ignore"):
        logm = np.where(mat > 0, np.log10(np.where(mat > 0, mat, 1.0)), np.nan)
    return steps, logm


def _step_edges(steps: np.ndarray) -> np.ndarray:
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])


def _spectrum_figure(runs: List[RunData], prefix: str, path: str) -> None:
    """One heatmap per (run, spectrum key), all on the same colour scale (one colour bar)."""
    import matplotlib

    panels = [(d, key) for d in runs for key in sorted(d.spectra)]
    mats = {(id(d), key): _spectrum_matrix(d.spectra[key]) for d, key in panels}
    finite = np.concatenate([m[np.isfinite(m)] for _, m in mats.values()] or [np.zeros(0)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    vmin = max(vmin, vmax - 8.0)  # eight decades: below that is numerical noise
    n = len(panels)
    ncols = min(n, 2)
    nrows = math.ceil(n / 2)
    fig = _new_figure(6.0 * ncols + 0.9, 4.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.subplots_adjust(hspace=0.38, wspace=0.25, **_inches_to_fraction(fig, 0.45, 0.6, 0.8, 1.3))
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#bdbdbd")
    mesh = None
    for i, (data, key) in enumerate(panels):
        ax = axes[i // 2][i % 2]
        tap = (split_key(key, prefix) or ("?", ""))[0]
        steps, logm = mats[(id(data), key)]
        who = data.name if len(runs) > 1 else f"tap {tap}"
        if len(runs) > 1 and len({k for d in runs for k in d.spectra}) > 1:
            who += f", tap {tap}"
        if steps.size >= 2:
            mesh = ax.pcolormesh(_step_edges(steps), np.arange(0.5, logm.shape[0] + 1), np.ma.masked_invalid(logm),
                                 cmap=cmap, shading="flat", vmin=vmin, vmax=vmax)
            ax.set_xlabel("step", fontsize=9)
            ax.set_ylabel("eigenvalue rank (1 = largest)", fontsize=9)
            ax.invert_yaxis()
            ax.set_title(f"{who}: spectrum over time", fontsize=10)
        else:
            ax.plot(np.arange(1, logm.shape[0] + 1), logm[:, 0], color=TAP_COLORS[0], marker=".", lw=1.4)
            ax.set_ylim(vmin, vmax)
            ax.set_xlabel("eigenvalue rank (1 = largest)", fontsize=9)
            ax.set_ylabel(r"$\log_{10}$ eigenvalue", fontsize=9)
            ax.set_title(f"{who}: spectrum at step {int(steps[0])} (the only one recorded)", fontsize=10)
            ax.grid(True, alpha=0.3)
    for j in range(n, axes.size):
        axes[j // 2][j % 2].set_visible(False)
    if mesh is not None:
        cax = fig.add_axes([1 - 1.05 / fig.get_size_inches()[0], 0.15, 0.18 / fig.get_size_inches()[0], 0.7])
        fig.colorbar(mesh, cax=cax, label=r"$\log_{10}$ eigenvalue (same scale for every panel)")
    _save(fig, path)


# --------------------------------------------------------------------------------------------- page
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1400px;
color:#212121;padding:0 16px}
h1{margin-bottom:4px;overflow-wrap:anywhere}h2{margin-top:28px;border-bottom:1px solid #e0e0e0;padding-bottom:4px}
code{background:#f5f5f5;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere}
img{max-width:100%;height:auto;border:1px solid #eeeeee}
table{border-collapse:collapse;font-size:14px;max-width:100%}th,td{border:1px solid #e0e0e0;padding:4px 8px;
text-align:left;vertical-align:top;overflow-wrap:break-word}th{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.sev{font-weight:600;color:#fff;border-radius:3px;padding:1px 6px;white-space:nowrap}
td.run{min-width:7em}
.sev-resolved{background:#2b9348}.sev-info{background:#1f77b4}.sev-warning{background:#ff8c00}.sev-critical{background:#d62728}
.missing{color:#616161;font-style:italic}.meta{color:#616161;overflow-wrap:anywhere}
#verdict{list-style:none;padding:0;margin:12px 0}
#verdict li{font-size:20px;font-weight:600;padding:10px 14px;margin:6px 0;border-radius:6px;border-left:8px solid}
#verdict li.collapsed{background:#fdecea;border-color:#d62728}#verdict li.healthy{background:#e8f5e9;border-color:#2b9348}
#verdict .swatch{display:inline-block;width:14px;height:14px;border-radius:3px;margin-right:8px;vertical-align:-1px}
"""


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _img(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        encoded = base64.b64encode(f.read()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _alerts_html(runs: List[RunData]) -> str:
    """The alerts, one row each: run, step, severity, then what happened (rule, key, value, message) in one wide
    cell, so the table fits a narrow window."""
    rows = []
    several = len(runs) > 1
    for data in runs:
        for a in data.alerts:
            run_cell = f"<td class=\"run\">{html.escape(data.name)}</td>" if several else ""
            resolved = getattr(a, "status", "fired") == "resolved"
            badge = ('<span class="sev sev-resolved">resolved</span>' if resolved else
                     f'<span class="sev sev-{html.escape(a.severity)}">{html.escape(a.severity)}</span>')
            rows.append(
                f"<tr>{run_cell}<td class=\"num\">{a.step}</td><td>{badge}</td><td><code>{html.escape(a.rule)}</code> on "
                f"<code>{html.escape(a.key)}</code> = {_fmt(a.value)}<br>{html.escape(a.message or a.rule)}</td></tr>"
            )
    if not rows:
        return '<p id="alerts-none">No alerts fired.</p>'
    head = "<th>run</th>" if several else ""
    return (f'<table id="alerts"><thead><tr>{head}<th>step</th><th>severity</th><th>what happened</th>'
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _values_html(runs: List[RunData], prefix: str) -> str:
    from spherewatch.keys import order_keys

    several = len(runs) > 1
    keys = order_keys({k for d in runs for k in d.scalars}, prefix)
    head = "".join(f"<th>{html.escape(d.name)}: final</th>" for d in runs) if several else (
        "<th>points</th><th>first value</th><th>final value</th>")
    rows = []
    for key in keys:
        cells = []
        for data in runs:
            points = data.scalars.get(key) or []
            if not points:
                cells.append('<td class="num">–</td>' if several else "")
                continue
            (first_step, first), (last_step, last) = points[0], points[-1]
            if several:
                cells.append(f'<td class="num">{_fmt(last)} <span class="meta">(step {last_step})</span></td>')
            else:
                cells.append(
                    f'<td class="num">{len(points)}</td>'
                    f'<td class="num">{_fmt(first)} <span class="meta">(step {first_step})</span></td>'
                    f'<td class="num">{_fmt(last)} <span class="meta">(step {last_step})</span></td>')
        rows.append(f"<tr><td><code>{html.escape(key)}</code></td>{''.join(cells)}</tr>")
    for key in sorted({k for d in runs for k in d.spectra}):
        cells = []
        for data in runs:
            if key not in data.spectra:
                cells.append("<td>–</td>")
                continue
            step, values = data.spectra[key][-1]
            finite = values[np.isfinite(values)]
            top = _fmt(float(finite.max())) if finite.size else "nan"
            if several:
                cells.append(f'<td class="num">{values.size} eigenvalues, largest {top}</td>')
            else:
                cells.append(
                    f'<td class="num">{len(data.spectra[key])}</td><td class="num" colspan="2">{values.size} '
                    f'eigenvalues, largest {top} <span class="meta">(step {step})</span></td>')
        rows.append(f"<tr><td><code>{html.escape(key)}</code></td>{''.join(cells)}</tr>")
    return (f'<table id="final-values"><thead><tr><th>key</th>{head}</tr></thead><tbody>' + "".join(rows)
            + "</tbody></table>")


def _summary(data: RunData, prefix: str) -> str:
    steps = [s for k in _own(data.scalars, prefix) for s, _ in data.scalars[k]]
    span = f"steps {min(steps)}–{max(steps)}" if steps else "no scalar steps"
    counts = ", ".join(f"{sum(a.severity == s for a in data.alerts)} {s}" for s in reversed(SEVERITIES)
                       if any(a.severity == s for a in data.alerts))
    return (f"{len(data.scalars)} keys, {span}, {len(data.alerts)} alert(s)" + (f" ({counts})" if counts else ""))


def _page(runs: List[RunData], sections: List[Tuple[str, str]], prefix: str) -> str:
    kinds = {"jsonl": "JSONL file", "tensorboard": "TensorBoard log dir", "mlflow": "MLflow"}
    title = ", ".join(d.name or d.source for d in runs)
    items = []
    for r, data in enumerate(runs):
        state = "collapsed" if _fired(data) else "healthy"
        color = RUN_COLORS[r % len(RUN_COLORS)]
        items.append(f'<li class="{state}"><span class="swatch" style="background:{color}"></span>'
                     f"{html.escape(data.name)}: {html.escape(verdict(data, prefix))}</li>")
    body = [
        f"<h1>spherewatch report: {html.escape(title)}</h1>",
        '<ul id="verdict">' + "".join(items) + "</ul>",
    ]
    for data in runs:
        body.append(f'<p class="meta">{html.escape(data.name)} — source ({kinds[data.kind]}): '
                    f'<code class="source">{html.escape(data.source)}</code></p>')
    body.append('<p id="summary">' + "<br>".join(
        html.escape((f"{d.name}: " if len(runs) > 1 else "") + _summary(d, prefix)) for d in runs) + "</p>")
    # the first run's source keeps its id (a single-run page reads as before)
    body[2] = body[2].replace('<code class="source">', '<code class="source" id="source">', 1)
    sections = list(sections)
    if sections:
        heading, content = sections.pop(0)
        body += [f"<h2>{html.escape(heading)}</h2>", content]
    body += ["<h2>Alerts</h2>", _alerts_html(runs)]
    for heading, content in sections:
        body += [f"<h2>{html.escape(heading)}</h2>", content]
    body += ["<h2>Final values</h2>", _values_html(runs, prefix)]
    notes = [f"{d.name}: {n}" if len(runs) > 1 else n for d in runs for n in d.notes]
    if notes:
        body += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    body.append(f'<p class="meta">Made by spherewatch {html.escape(__version__)}.</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>spherewatch report: {html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )


def build_report(run: Any, out_dir: str | os.PathLike[str] = "spherewatch_report", *,
                 tracking_uri: Optional[str] = None, prefix: str = "spherewatch",
                 names: Optional[List[str]] = None) -> Dict[str, Any]:
    """Write PNG figures and a self-contained ``report.html`` of one monitored run, or several compared.

    ``run`` is a JSONL file written by :class:`~spherewatch.sinks.JsonlSink`, a TensorBoard log dir, or an
    MLflow run id (looked up on ``tracking_uri``; see :func:`load_run`), or a list of them: the runs are then
    drawn on shared axes, a colour per run. Written into ``out_dir``:

    * ``overview.png``: the collapse overview, uniformity, effective rank and the host's training loss (when it
      was logged beside them) of every run on shared axes, alerts as dots coloured by severity, the fixed
      thresholds of the run's alert rules as dashed lines;
    * ``metrics.png``: one panel per metric, in order of importance (:mod:`spherewatch.keys`), same overlay;
    * ``alignment_uniformity.png`` (when alignment was logged): each run's trajectory in the
      alignment–uniformity plane (Wang & Isola, 2020); healthy training moves down and left, collapse drives
      uniformity towards 0;
    * ``spectrum.png`` (when spectra were logged): log10 eigenvalues over time (x = step, y = eigenvalue rank),
      one heatmap per run on one colour scale; dimensional collapse shows as ranks going dark (Jing et al., 2022);
    * ``report.html``: the verdict of every run ("collapse detected at step 10, critical at step 20" /
      "healthy: no alerts in 300 steps"), the overview, the alerts, the figures embedded as
      ``data:image/png;base64`` URIs (the page needs no other file) and the final value of every key; it reads
      at 900 px without horizontal scrolling.

    Output is deterministic: the same runs give byte-identical files.

    Args:
        run: JSONL file, TensorBoard log dir or MLflow run id, or a list of them.
        out_dir: output folder (created if missing).
        tracking_uri: MLflow store for run ids (default ``sqlite:///mlflow.db``).
        prefix: the key prefix the Monitor used.
        names: display names of the runs (default: run folder, file or MLflow run name).

    Returns:
        ``{"html": path of report.html, "figures": [paths of the PNG files], "verdicts": {name: verdict}}``.

    Raises:
        ModuleNotFoundError: matplotlib (or the reader of the source: tensorboard, mlflow) is missing.
        FileNotFoundError: ``run`` is no file, no folder and no MLflow run.
        ValueError: a source holds no spherewatch values, or ``out_dir`` is an existing file.

    Example::

        from spherewatch.report import build_report
        build_report("runs/exp1/spherewatch.jsonl", "report_exp1")["html"]   # 'report_exp1/report.html'
        build_report(["runs/healthy", "runs/collapsing"], "compare")          # both on shared axes
    """
    try:
        import matplotlib  # noqa: F401
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError("spherewatch report needs `matplotlib`: pip install 'spherewatch[report]'.") from err
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {out_dir!r} exists and is not a folder; pass another output folder.")
    sources = list(run) if isinstance(run, (list, tuple)) else [run]
    if not sources:
        raise ValueError(f"No run given. {ACCEPTED}.")
    runs = [load_run(r, tracking_uri=tracking_uri, prefix=prefix) for r in sources]
    if names is not None:
        if len(names) != len(runs):
            raise ValueError(f"`names` has {len(names)} entries for {len(runs)} runs; give one name per run.")
        for data, name in zip(runs, names):
            data.name = str(name)
    seen: Dict[str, int] = {}
    for data in runs:  # two runs of the same name stay distinguishable
        seen[data.name] = seen.get(data.name, 0) + 1
        if seen[data.name] > 1:
            data.name = f"{data.name} ({seen[data.name]})"
    os.makedirs(out_dir, exist_ok=True)
    for name in FIGURE_NAMES:  # no stale figure of an earlier report in the same folder
        stale = os.path.join(out_dir, name)
        if os.path.isfile(stale):
            os.remove(stale)

    figures: List[str] = []
    sections: List[Tuple[str, str]] = []
    if any(_own(d.scalars, prefix) for d in runs):
        path = os.path.join(out_dir, "overview.png")
        overview_figure(runs, path, prefix=prefix)
        figures.append(path)
        sections.append(("Collapse overview", _img(path, "uniformity, effective rank and training loss per run")))
        path = os.path.join(out_dir, "metrics.png")
        _metrics_figure(runs, prefix, path)
        figures.append(path)
        sections.append(("All metrics", _img(path, "metric curves with alert markers")))
    else:
        sections.append(("All metrics", '<p class="missing">No scalar metrics were logged.</p>'))

    if any(_alignment_uniformity_pairs(d, prefix) for d in runs):
        path = os.path.join(out_dir, "alignment_uniformity.png")
        _alignment_uniformity_figure(runs, prefix, path)
        figures.append(path)
        sections.append(("Alignment and uniformity", _img(path, "trajectory in the alignment-uniformity plane")))
    else:
        sections.append(("Alignment and uniformity", (
            '<p class="missing" id="no-alignment">Alignment was not logged (it needs the paired view: '
            "<code>observe(z, z_pos)</code>) together with uniformity, so there is no alignment–uniformity "
            "trajectory.</p>")))

    if any(d.spectra for d in runs):
        path = os.path.join(out_dir, "spectrum.png")
        _spectrum_figure(runs, prefix, path)
        figures.append(path)
        over_time = any(len(series) > 1 for d in runs for series in d.spectra.values())
        heading = "Spectrum over time" if over_time else "Spectrum (one step recorded)"
        sections.append((heading, _img(path, "eigenvalue spectrum")))
    else:
        sections.append(("Spectrum over time", (
            '<p class="missing" id="no-spectrum">No spectrum was logged (enable the <code>spectrum</code> '
            'metric, e.g. <code>preset="full"</code>), so there is no spectrum over time.</p>')))

    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(_page(runs, sections, prefix))
    logger.info("spherewatch report: wrote %s and %d figure(s).", html_path, len(figures))
    return {"html": html_path, "figures": figures, "verdicts": {d.name: verdict(d, prefix) for d in runs}}
