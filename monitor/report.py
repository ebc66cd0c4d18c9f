"""A self-contained HTML page and PNG figures of a monitored run (``spherewatch report``).

The run is read back from any of the places the Monitor writes to:

* a JSONL file written by :class:`~spherewatch.sinks.JsonlSink` (every value, every spectrum, every alert);
* a TensorBoard log dir (scalars, the ``spectrum`` histograms, the alert texts);
* an MLflow run id (metric histories, the ``spherewatch/alerts.json`` artifact and the latest spectrum in
  ``spherewatch/spectra.json``).

Figures: the metric curves (one panel per metric, every tap, alerts marked at their step and coloured by
severity), the trajectory in the alignment–uniformity plane (Wang & Isola, 2020) and the eigenvalue
spectrum over time (Jing et al., 2022). They are written as PNG files and embedded in ``report.html`` as
data URIs, so the page works on its own (attach it to an issue, mail it, open it offline).

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
from spherewatch.sinks.base import split_key
from spherewatch.sinks.jsonl import decode_float, read_jsonl

__all__ = ["RunData", "build_report", "load_run"]

logger = logging.getLogger("spherewatch.report")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # same default as MLflowSink (not imported: keeps this module light)
ALERTS_ARTIFACT = "spherewatch/alerts.json"
SPECTRA_ARTIFACT = "spherewatch/spectra.json"
ACCEPTED = (
    "`spherewatch report` takes a JSONL file written by JsonlSink (e.g. runs/exp1/spherewatch.jsonl), a "
    "TensorBoard log dir (e.g. runs/exp1), or an MLflow run id (looked up on tracking_uri / --tracking-uri, "
    f"default {DEFAULT_TRACKING_URI})"
)
FIGURE_NAMES = ("metrics.png", "alignment_uniformity.png", "spectrum.png")
SEVERITY_COLORS = {"info": "#1f77b4", "warning": "#ff8c00", "critical": "#d62728"}
# Tap colours: distinct from the severity colours, so an alert line is never mistaken for a curve.
TAP_COLORS = ("#2a6f97", "#2b9348", "#6a4c93", "#8d6e63", "#00838f", "#c2185b", "#827717", "#37474f")
# Panel order: the headline metrics first, then the rest alphabetically.
METRIC_ORDER = (
    "uniformity", "alignment", "uniformity_pos", "effective_rank", "effective_rank_centered", "normalized_std",
    "mean_cosine", "collapsed_dimensions", "dead_dimensions", "alpha_req", "alpha_req_r2", "nc1",
    "nonfinite_fraction", "norm_mean", "norm_std", "norm_min", "norm_max",
)
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
    """

    kind: str
    source: str
    scalars: Dict[str, List[Tuple[int, float]]]
    spectra: Dict[str, List[Tuple[int, np.ndarray]]]
    alerts: List[Alert]
    notes: List[str] = dataclasses.field(default_factory=list)
    name: str = ""


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
    parts = split_key(key, prefix)
    return parts is not None and parts[0] != "alerts"  # <prefix>/alerts/count is MLflow's alert counter


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
    if not scalars and not spectra:
        raise _no_records_error(f"The JSONL file {path!r}", list(data["scalars"]) + list(data["histograms"]), prefix)
    full = os.path.abspath(path)
    name = os.path.join(os.path.basename(os.path.dirname(full)), os.path.basename(full))
    return RunData("jsonl", full, scalars, spectra, _sort_alerts(data["alerts"]), name=name)


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
    if not scalars and not spectra:
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
    try:
        available = {a.path for a in client.list_artifacts(run_id, "spherewatch")}
        for record in _read_json_artifact(client, run_id, ALERTS_ARTIFACT, available) or []:
            record = dict(record)
            record["value"] = decode_float(record.get("value"))
            alerts.append(Alert.from_dict(record))
        for key, rec in (_read_json_artifact(client, run_id, SPECTRA_ARTIFACT, available) or {}).items():
            if _is_spectrum(key, prefix):
                values = np.array([decode_float(v) for v in rec["values"]], dtype=np.float64)
                spectra[key] = [(int(rec["step"]), values)]
    except (OSError, ValueError, KeyError, TypeError, MlflowException) as err:
        logger.warning("spherewatch report: could not read the artifacts of MLflow run %s: %s", run_id, err)
        notes.append(f"The artifacts of this run could not be read ({type(err).__name__}: {err}); "
                     "alerts and spectra may be missing.")
    if not scalars and not spectra:
        raise _no_records_error(f"The MLflow run {run_id!r}", list(run.data.metrics), prefix)
    if spectra:
        notes.append("MLflow keeps only the latest spectrum of a run (artifact spherewatch/spectra.json): "
                     "use the run's JSONL file or TensorBoard log dir for the spectrum over time.")
    experiment = client.get_experiment(run.info.experiment_id)
    name = f" ({run.info.run_name!r}, experiment {experiment.name!r})" if experiment is not None else ""
    source = f"MLflow run {run_id}{name} on {redact_uri(uri)}"
    return RunData("mlflow", source, scalars, spectra, _sort_alerts(alerts), notes, run.info.run_name or run_id)


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


# --------------------------------------------------------------------------------------------- figures
def _metric_sort_key(metric: str) -> Tuple[int, str]:
    return (METRIC_ORDER.index(metric), "") if metric in METRIC_ORDER else (len(METRIC_ORDER), metric)


def _by_metric(keys: List[str], prefix: str) -> Dict[str, Dict[str, str]]:
    """``{metric: {tap: key}}`` in display order."""
    groups: Dict[str, Dict[str, str]] = {}
    for key in keys:
        parts = split_key(key, prefix)
        if parts is not None:
            groups.setdefault(parts[1], {})[parts[0]] = key
    return {m: dict(sorted(groups[m].items())) for m in sorted(groups, key=_metric_sort_key)}


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


def _metrics_figure(data: RunData, prefix: str, path: str) -> None:
    from matplotlib.lines import Line2D

    groups = _by_metric(list(data.scalars), prefix)
    n = len(groups)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(4.6 * ncols, 2.7 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    fig.subplots_adjust(hspace=0.3, wspace=0.22, **_inches_to_fraction(fig, 0.75, 0.5, 0.55, 0.2))
    taps = sorted({tap for taps in groups.values() for tap in taps})
    tap_color = {tap: TAP_COLORS[i % len(TAP_COLORS)] for i, tap in enumerate(taps)}
    split_alerts = [(a, split_key(a.key, prefix)) for a in data.alerts]
    for i, (metric, tap_keys) in enumerate(groups.items()):
        ax = axes[i // ncols][i % ncols]
        for a, parts in split_alerts:
            if parts is not None and parts[1] == metric:
                ax.axvline(a.step, color=SEVERITY_COLORS.get(a.severity, "black"), lw=1.3, alpha=0.85, zorder=1)
            else:
                ax.axvline(a.step, color=SEVERITY_COLORS.get(a.severity, "black"), lw=0.7, ls=":", alpha=0.5,
                           zorder=1)
        for tap, key in tap_keys.items():
            x, y = _finite_xy(data.scalars[key])
            ax.plot(x, y, color=tap_color[tap], lw=1.6, marker="." if len(x) <= 200 else None, ms=4, zorder=2,
                    label=tap)
        for a, parts in split_alerts:
            if parts is not None and parts[1] == metric and parts[0] in tap_keys and math.isfinite(a.value):
                ax.scatter([a.step], [a.value], s=55, marker="o", color=SEVERITY_COLORS.get(a.severity, "black"),
                           edgecolors="black", linewidths=0.6, zorder=3)
        ax.set_title(metric, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        if i + ncols >= n:  # the lowest panel of its column
            ax.set_xlabel("step", fontsize=8)
            ax.xaxis.set_tick_params(labelbottom=True)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    handles = [Line2D([], [], color=tap_color[t], lw=2, label=f"tap {t}") for t in taps]
    severities = [s for s in SEVERITIES if any(a.severity == s for a in data.alerts)]
    handles += [Line2D([], [], color=SEVERITY_COLORS[s], lw=1.5, marker="o", markeredgecolor="black",
                       label=f"{s} alert") for s in severities]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(handles), 6),
               fontsize=9, frameon=False)
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


def _alignment_uniformity_figure(pairs: Dict[str, Tuple[np.ndarray, ...]], path: str) -> None:
    n = len(pairs)
    fig = _new_figure(5.6 * n, 4.6)
    axes = fig.subplots(1, n, squeeze=False)[0]
    fig.subplots_adjust(wspace=0.3, **_inches_to_fraction(fig, 0.4, 0.6, 0.8, 0.1))
    for ax, (tap, (steps, align, unif)) in zip(axes, pairs.items()):
        ax.plot(align, unif, color="#9e9e9e", lw=0.9, zorder=1)
        sc = ax.scatter(align, unif, c=steps, cmap="viridis", s=36, edgecolors="black", linewidths=0.3, zorder=2)
        mid = (float(align.min()) + float(align.max())) / 2
        for j, dy in ((0, 6), (len(steps) - 1, -12)) if len(steps) > 1 else ((0, 6),):
            right = align[j] > mid  # label towards the inside of the axes
            ax.annotate(f"step {int(steps[j])}", (align[j], unif[j]), textcoords="offset points",
                        xytext=(-6 if right else 6, dy), ha="right" if right else "left", fontsize=8)
        fig.colorbar(sc, ax=ax, label="step")
        ax.set_xlabel("alignment (lower: positive pairs closer)", fontsize=9)
        ax.set_ylabel("uniformity (lower: more spread out)", fontsize=9)
        ax.set_title(f"tap {tap}: alignment vs uniformity", fontsize=10)
        ax.text(0.02, 0.02, "better: lower left", transform=ax.transAxes, fontsize=8, color="#555555")
        ax.grid(True, alpha=0.3)
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


def _spectrum_figure(data: RunData, prefix: str, path: str) -> None:
    import matplotlib

    keys = sorted(data.spectra)
    n = len(keys)
    fig = _new_figure(6.6 * min(n, 2), 4.4 * math.ceil(n / 2))
    axes = fig.subplots(math.ceil(n / 2), min(n, 2), squeeze=False)
    fig.subplots_adjust(hspace=0.35, wspace=0.3, **_inches_to_fraction(fig, 0.4, 0.6, 0.8, 0.1))
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#bdbdbd")
    for i, key in enumerate(keys):
        ax = axes[i // 2][i % 2]
        tap = (split_key(key, prefix) or ("?", ""))[0]
        steps, logm = _spectrum_matrix(data.spectra[key])
        ranks = np.arange(1, logm.shape[0] + 1)
        if steps.size >= 2:
            mesh = ax.pcolormesh(_step_edges(steps), np.arange(0.5, logm.shape[0] + 1), np.ma.masked_invalid(logm),
                                 cmap=cmap, shading="flat")
            fig.colorbar(mesh, ax=ax, label=r"$\log_{10}$ eigenvalue")
            ax.set_xlabel("step", fontsize=9)
            ax.set_ylabel("eigenvalue rank (1 = largest)", fontsize=9)
            ax.invert_yaxis()
            ax.set_title(f"tap {tap}: spectrum over time", fontsize=10)
        else:
            ax.plot(ranks, logm[:, 0], color=TAP_COLORS[0], marker=".", lw=1.4)
            ax.set_xlabel("eigenvalue rank (1 = largest)", fontsize=9)
            ax.set_ylabel(r"$\log_{10}$ eigenvalue", fontsize=9)
            ax.set_title(f"tap {tap}: spectrum at step {int(steps[0])} (the only one recorded)", fontsize=10)
            ax.grid(True, alpha=0.3)
    for j in range(n, axes.size):
        axes[j // 2][j % 2].set_visible(False)
    _save(fig, path)


# --------------------------------------------------------------------------------------------- page
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1400px;
color:#212121;padding:0 16px}
h1{margin-bottom:4px}h2{margin-top:28px;border-bottom:1px solid #e0e0e0;padding-bottom:4px}
code{background:#f5f5f5;padding:1px 4px;border-radius:3px}
img{max-width:100%;height:auto;border:1px solid #eeeeee}
table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #e0e0e0;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#fafafa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev{font-weight:600;color:#fff;border-radius:3px;padding:1px 6px}
.sev-info{background:#1f77b4}.sev-warning{background:#ff8c00}.sev-critical{background:#d62728}
.missing{color:#616161;font-style:italic}.meta{color:#616161}
"""


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _img(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        encoded = base64.b64encode(f.read()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _alerts_html(alerts: List[Alert]) -> str:
    if not alerts:
        return '<p id="alerts-none">No alerts fired.</p>'
    rows = []
    for a in alerts:
        rows.append(
            f"<tr><td class=\"num\">{a.step}</td><td><span class=\"sev sev-{html.escape(a.severity)}\">"
            f"{html.escape(a.severity)}</span></td><td><code>{html.escape(a.rule)}</code></td>"
            f"<td><code>{html.escape(a.key)}</code></td><td class=\"num\">{_fmt(a.value)}</td>"
            f"<td>{html.escape(a.message or a.rule)}</td></tr>"
        )
    return ('<table id="alerts"><thead><tr><th>step</th><th>severity</th><th>rule</th><th>key</th><th>value</th>'
            "<th>message</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _values_html(data: RunData) -> str:
    rows = []
    for key in sorted(data.scalars):
        points = data.scalars[key]
        if not points:
            continue
        (first_step, first), (last_step, last) = points[0], points[-1]
        rows.append(
            f"<tr><td><code>{html.escape(key)}</code></td><td class=\"num\">{len(points)}</td>"
            f"<td class=\"num\">{_fmt(first)} <span class=\"meta\">(step {first_step})</span></td>"
            f"<td class=\"num\">{_fmt(last)} <span class=\"meta\">(step {last_step})</span></td></tr>"
        )
    for key in sorted(data.spectra):
        step, values = data.spectra[key][-1]
        finite = values[np.isfinite(values)]
        top = _fmt(float(finite.max())) if finite.size else "nan"
        rows.append(
            f"<tr><td><code>{html.escape(key)}</code></td><td class=\"num\">{len(data.spectra[key])}</td>"
            f"<td class=\"num\" colspan=\"2\">{values.size} eigenvalues, largest {top} "
            f"<span class=\"meta\">(step {step})</span></td></tr>"
        )
    return ('<table id="final-values"><thead><tr><th>key</th><th>points</th><th>first value</th>'
            "<th>final value</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _page(data: RunData, sections: List[Tuple[str, str]]) -> str:
    steps = [s for pts in data.scalars.values() for s, _ in pts]
    span = f"steps {min(steps)}–{max(steps)}" if steps else "no scalar steps"
    counts = ", ".join(f"{sum(a.severity == s for a in data.alerts)} {s}" for s in reversed(SEVERITIES)
                       if any(a.severity == s for a in data.alerts))
    summary = (f"{len(data.scalars)} keys, {span}, {len(data.alerts)} alert(s)" + (f" ({counts})" if counts else ""))
    kind = {"jsonl": "JSONL file", "tensorboard": "TensorBoard log dir", "mlflow": "MLflow"}[data.kind]
    title = data.name or data.source
    body = [
        f"<h1>spherewatch report: {html.escape(title)}</h1>",
        f'<p class="meta">Source ({kind}): <code id="source">{html.escape(data.source)}</code></p>',
        f'<p id="summary">{html.escape(summary)}</p>',
        "<h2>Alerts</h2>", _alerts_html(data.alerts),
    ]
    for heading, content in sections:
        body += [f"<h2>{html.escape(heading)}</h2>", content]
    body += ["<h2>Final values</h2>", _values_html(data)]
    if data.notes:
        body += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in data.notes) + "</ul>"]
    body.append(f'<p class="meta">Made by spherewatch {html.escape(__version__)}.</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>spherewatch report: {html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )


def build_report(run: str | os.PathLike[str], out_dir: str | os.PathLike[str] = "spherewatch_report", *,
                 tracking_uri: Optional[str] = None, prefix: str = "spherewatch") -> Dict[str, Any]:
    """Write PNG figures and a self-contained ``report.html`` of a monitored run.

    ``run`` is a JSONL file written by :class:`~spherewatch.sinks.JsonlSink`, a TensorBoard log dir, or an
    MLflow run id (looked up on ``tracking_uri``); see :func:`load_run`. Written into ``out_dir``:

    * ``metrics.png``: one panel per metric with a curve per tap; alerts are vertical lines at their step,
      coloured by severity (solid with a dot at the value on the alert's own metric, dotted elsewhere);
    * ``alignment_uniformity.png`` (when alignment was logged): the run's trajectory in the
      alignment–uniformity plane, coloured by step, as in Wang & Isola (2020); healthy training moves
      down and left, collapse drives uniformity towards 0;
    * ``spectrum.png`` (when spectra were logged): log10 eigenvalues of the embedding covariance over
      time (x = step, y = eigenvalue rank); dimensional collapse shows as ranks going dark (Jing et al., 2022);
    * ``report.html``: title, source, the alerts (step, severity, message), the figures embedded as
      ``data:image/png;base64`` URIs (the page needs no other file) and the final value of every key.

    Output is deterministic: the same run gives byte-identical files.

    Args:
        run: JSONL file, TensorBoard log dir or MLflow run id.
        out_dir: output folder (created if missing).
        tracking_uri: MLflow store for a run id (default ``sqlite:///mlflow.db``).
        prefix: the key prefix the Monitor used.

    Returns:
        ``{"html": path of report.html, "figures": [paths of the PNG files]}``.

    Raises:
        ModuleNotFoundError: matplotlib (or the reader of the source: tensorboard, mlflow) is missing.
        FileNotFoundError: ``run`` is no file, no folder and no MLflow run.
        ValueError: the source holds no spherewatch values, or ``out_dir`` is an existing file.

    Example::

        from spherewatch.report import build_report
        build_report("runs/exp1/spherewatch.jsonl", "report_exp1")["html"]   # 'report_exp1/report.html'
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
    data = load_run(run, tracking_uri=tracking_uri, prefix=prefix)
    os.makedirs(out_dir, exist_ok=True)
    for name in FIGURE_NAMES:  # no stale figure of an earlier report in the same folder
        stale = os.path.join(out_dir, name)
        if os.path.isfile(stale):
            os.remove(stale)

    figures: List[str] = []
    sections: List[Tuple[str, str]] = []
    if data.scalars:
        path = os.path.join(out_dir, "metrics.png")
        _metrics_figure(data, prefix, path)
        figures.append(path)
        sections.append(("Metrics", _img(path, "metric curves with alert markers")))
    else:
        sections.append(("Metrics", '<p class="missing">No scalar metrics were logged.</p>'))

    pairs = _alignment_uniformity_pairs(data, prefix)
    if pairs:
        path = os.path.join(out_dir, "alignment_uniformity.png")
        _alignment_uniformity_figure(pairs, path)
        figures.append(path)
        sections.append(("Alignment and uniformity", _img(path, "trajectory in the alignment-uniformity plane")))
    else:
        sections.append(("Alignment and uniformity", (
            '<p class="missing" id="no-alignment">Alignment was not logged (it needs the paired view: '
            "<code>observe(z, z_pos)</code>) together with uniformity, so there is no alignment–uniformity "
            "trajectory.</p>")))

    if data.spectra:
        path = os.path.join(out_dir, "spectrum.png")
        _spectrum_figure(data, prefix, path)
        figures.append(path)
        over_time = any(len(series) > 1 for series in data.spectra.values())
        heading = "Spectrum over time" if over_time else "Spectrum (one step recorded)"
        sections.append((heading, _img(path, "eigenvalue spectrum")))
    else:
        sections.append(("Spectrum over time", (
            '<p class="missing" id="no-spectrum">No spectrum was logged (enable the <code>spectrum</code> '
            'metric, e.g. <code>preset="full"</code>), so there is no spectrum over time.</p>')))

    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(_page(data, sections))
    logger.info("spherewatch report: wrote %s and %d figure(s).", html_path, len(figures))
    return {"html": html_path, "figures": figures}
