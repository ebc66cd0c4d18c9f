"""The report's PNG figures: the collapse overview, every metric, the alignment–uniformity plane, the spectrum.

Every run is drawn on shared axes (a colour per run, a line style per tap), alerts as dots coloured by severity at
their step, the fixed thresholds of the run's rules as dashed lines (labelled where no curve runs), the step axis from
the first logged step to the last (the page's "steps 1–300" names the same range). The overview also marks each run's
first collapse alert, whatever metric it fired on, with a dotted vertical line at its step on every panel: the step the
run's verdict banner names. matplotlib (``pip install
'spherewatch[report]'``) is imported only when a figure is drawn, and only through its object-oriented API with the
Agg canvas: the user's pyplot backend and state are left alone. Output is deterministic (no timestamp in the PNG).

Example::

    from spherewatch.report import load_run, overview_figure
    overview_figure([load_run("runs/healthy"), load_run("runs/collapsing")], "overview.png")
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from spherewatch.alerts.verdict import collapse_alerts, severity_rank
from spherewatch.keys import describe, metric_key, metric_rank, parse_key
from spherewatch.report.run_verdict import verdict
from spherewatch.report.rundata import RunData
from spherewatch.report.thresholds import threshold_lines

__all__ = [
    "RUN_COLORS", "SEVERITY_COLORS", "alignment_figure", "alignment_uniformity_pairs", "first_alert",
    "metrics_figure", "overview_figure", "spectrum_figure", "step_range",
]

SEVERITY_COLORS = {"info": "#1f77b4", "warning": "#ff8c00", "critical": "#d62728"}
# Tap colours: distinct from the severity colours, so an alert line is never mistaken for a curve.
TAP_COLORS = ("#2a6f97", "#2b9348", "#6a4c93", "#8d6e63", "#00838f", "#c2185b", "#827717", "#37474f")
RUN_COLORS = ("#2a6f97", "#8e44ad", "#2b9348", "#8d6e63", "#00838f", "#c2185b", "#827717", "#37474f")
TAP_STYLES = ("-", "--", ":", "-.")


def _metric_sort_key(metric: str) -> Tuple[int, str]:
    return (metric_rank(metric), metric)


def _by_metric(keys: List[str], prefix: str) -> Dict[str, Dict[str, str]]:
    """``{metric: {tap: key}}`` in order of importance (:mod:`spherewatch.keys`)."""
    groups: Dict[str, Dict[str, str]] = {}
    for key in keys:
        parts = parse_key(key, prefix)
        if parts is not None:
            groups.setdefault(parts[1], {})[parts[0]] = key
    return {m: dict(sorted(groups[m].items())) for m in sorted(groups, key=_metric_sort_key)}


def _loss_keys(data: RunData, prefix: str) -> List[str]:
    return sorted(k for k in data.scalars if parse_key(k, prefix) is None)


def step_range(runs: List[RunData]) -> Optional[Tuple[int, int]]:
    """``(first, last)`` step of every scalar the figures draw (the metrics and the host's loss) over ``runs``;
    ``None`` when there is none. The report's summary names each run's range the same way."""
    steps = [s for d in runs for points in d.scalars.values() for s, _ in points]
    return (int(min(steps)), int(max(steps))) if steps else None


def first_alert(data: RunData) -> Optional[Any]:
    """The run's first collapse alert (the earliest step; the most severe of that step), the one its verdict names;
    ``None`` for a healthy run."""
    fired = collapse_alerts(data.alerts)
    return min(fired, key=lambda a: (a.step, -severity_rank(a.severity))) if fired else None


def _step_axis(ax: Any, span: Optional[Tuple[int, int]]) -> None:
    """The x axis from the first logged step to the last, both ticked (a chart of steps 1–300 starts at 1, not 0)."""
    if span is None:
        return
    from matplotlib.ticker import MaxNLocator

    first, last = span
    pad = max(0.01 * (last - first), 0.5)
    ax.set_xlim(first - pad, last + pad)
    inner = [t for t in MaxNLocator(nbins=6, integer=True).tick_values(first, last)
             if first + 0.06 * (last - first) < t < last - 0.06 * (last - first)]
    ax.set_xticks(sorted({first, last, *inner}))


def _mark_first_alerts(ax: Any, runs: List[RunData]) -> None:
    """A dotted vertical line, in its severity's colour, at each run's first collapse alert (the legend says what
    fired there)."""
    for data in runs:
        alert = first_alert(data)
        if alert is not None:
            ax.axvline(alert.step, color=SEVERITY_COLORS.get(alert.severity, "black"), ls=":", lw=1.8, zorder=1.5,
                       gid="first-alert")


def _first_alert_label(data: RunData, prefix: str, several: bool) -> Optional[str]:
    """``first alert: step 40, mean cosine (warning)`` (with the run's name when ``several``); None when healthy."""
    alert = first_alert(data)
    if alert is None:
        return None
    parts = parse_key(alert.key, prefix)
    what = _title(parts[1]) if parts is not None else _plain(alert.key)
    who = f"{_plain(data.name)}: first alert" if several else "first alert"
    return f"{who} at step {alert.step}, {what} ({alert.severity})"


def _display_path(line: Any, spacing: float = 2.0) -> np.ndarray:
    """The curve of ``line`` in display coordinates, sampled every ``spacing`` pixels along its segments (a steep
    rise between two points passes through what lies between them); gaps (NaN) are not bridged."""
    xy = line.get_transform().transform(np.column_stack(line.get_data()).astype(float))
    out = [xy[np.all(np.isfinite(xy), axis=1)]]
    for a, b in zip(xy[:-1], xy[1:]):
        if np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
            n = int(np.hypot(*(b - a)) // spacing)
            if n > 1:
                t = np.linspace(0.0, 1.0, n + 1)[1:-1, None]
                out.append(a + t * (b - a))
    return np.concatenate(out) if out else np.zeros((0, 2))


def _place_threshold_label(ax: Any, text: str, value: float) -> Any:
    """The label of a threshold line where the fewest points of the curves fall under it: the left or right end,
    above or below the line, on a white box drawn over the curves (never hidden by one)."""
    renderer = ax.figure.canvas.get_renderer()
    points = np.concatenate([_display_path(line) for line in ax.get_lines() if line.get_gid() is None]
                            or [np.zeros((0, 2))])
    best = None
    for x, ha in ((0.01, "left"), (0.99, "right")):
        for dy, va in ((3, "bottom"), (-3, "top")):
            label = ax.annotate(text, (x, value), xycoords=("axes fraction", "data"), textcoords="offset points",
                                xytext=(0, dy), ha=ha, va=va, fontsize=8, color="#616161", zorder=4, gid="threshold",
                                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
                                      "alpha": 0.9})
            box = label.get_window_extent(renderer)
            inside = int(np.sum((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1)
                                & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1))) if len(points) else 0
            if best is None or inside < best[0]:
                if best is not None:
                    best[1].remove()
                best = (inside, label)
            else:
                label.remove()
            if inside == 0:
                return best[1]
    return best[1]


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


def _plain(text: str) -> str:
    """``text`` taken from a run (a name, a tap, a key) drawn as written: a ``$`` would start matplotlib's
    mathtext, and an invalid expression fails the whole figure."""
    return str(text).replace("$", r"\$")


def _title(metric: str) -> str:
    """The catalogue's title of ``metric`` (:func:`spherewatch.keys.describe`), else its name."""
    info = describe(metric_key(metric, "embeddings", scheme="tap"))
    return info.title if info is not None else _plain(metric)


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


def _panel(ax: Any, runs: List[RunData], metric: Optional[str], prefix: str, *, loss: bool = False,
           span: Optional[Tuple[int, int]] = None) -> None:
    """One metric (or the host's loss) of every run on one axes: a colour per run, a line style per tap,
    the run's alerts on that metric as dots, fixed thresholds as dashed grey lines; the x axis over ``span``."""
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
        for a in collapse_alerts(data.alerts):
            parts = parse_key(a.key, prefix)
            if parts is not None and parts[1] == metric and math.isfinite(a.value):
                ax.scatter([a.step], [a.value], s=50, marker="o", color=SEVERITY_COLORS.get(a.severity, "black"),
                           edgecolors=color, linewidths=1.4, zorder=3)
    labels: List[Tuple[str, float]] = []
    if not loss and runs:
        seen = set()
        for _, pattern, side, value in threshold_lines(runs[0]):
            if fnmatch.fnmatchcase(metric or "", pattern) and (side, value) not in seen:
                seen.add((side, value))
                ax.axhline(value, color="#757575", ls="--", lw=1.0, zorder=1, gid="threshold")
                labels.append((f"alert {side} {value:g}", value))
                thresholds.append(value)
    _steady_ylim(ax, values, thresholds)
    _step_axis(ax, span)
    for text, value in labels:  # once the axes are final: placed where no curve runs
        _place_threshold_label(ax, text, value)
    ax.set_title("training loss (host)" if loss else _title(metric or ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=9)


def _legend(fig: Any, runs: List[RunData], prefix: str, *, y: float = 1.0, first_alerts: bool = False) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=RUN_COLORS[r % len(RUN_COLORS)], lw=2.5, label=_plain(_run_label(d, prefix)))
               for r, d in enumerate(runs)]
    taps = sorted({t for d in runs for g in _by_metric(list(d.scalars), prefix).values() for t in g})
    if len(taps) > 1:
        handles += [Line2D([], [], color="#424242", ls=TAP_STYLES[i % len(TAP_STYLES)], lw=1.5, label=_plain(f"tap {t}"))
                    for i, t in enumerate(taps)]
    fired = {a.severity for d in runs for a in collapse_alerts(d.alerts)}
    severities = sorted((s for s in SEVERITY_COLORS if s in fired), key=severity_rank)
    handles += [Line2D([], [], ls="", color=SEVERITY_COLORS[s], marker="o", markeredgecolor="black",
                       label=f"{s} alert") for s in severities]
    if first_alerts:
        for data in runs:
            label = _first_alert_label(data, prefix, len(runs) > 1)
            if label is not None:
                handles.append(Line2D([], [], ls=":", lw=1.8, label=label,
                                      color=SEVERITY_COLORS.get(first_alert(data).severity, "black")))
    width, height = fig.get_size_inches()
    longest = max(len(h.get_label()) for h in handles)
    ncols = max(1, min(len(handles), int(width / (0.8 + 0.075 * longest))))
    rows = math.ceil(len(handles) / ncols)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, y), ncols=ncols, fontsize=10, frameon=False)
    fig.subplots_adjust(top=1 - (0.35 + 0.24 * rows) / height)  # room for the legend above the panels


def _run_label(data: RunData, prefix: str) -> str:
    """``name: collapse detected at step 40, ...`` or ``name: no alerts in 300 steps`` (the banner above the figures
    says "healthy"; a run named ``...-healthy`` would read it twice)."""
    text = verdict(data, prefix)
    return f"{data.name}: {text[len('healthy: '):] if text.startswith('healthy: ') else text}"


def overview_figure(runs: List[RunData], path: str, *, prefix: str = "spherewatch",
                    metrics: Tuple[str, ...] = ("uniformity", "effective_rank"), loss: bool = True) -> Any:
    """The collapse overview: ``metrics`` (and the host's loss, when logged and ``loss``) of every run on shared
    axes, one panel each, in one row, each run's first collapse alert marked on every panel (a dotted line at its
    step; the legend names the metric it fired on). Returns the matplotlib ``Figure``."""
    present = [m for m in metrics if any(m in _by_metric(list(d.scalars), prefix) for d in runs)]
    with_loss = loss and any(_loss_keys(d, prefix) for d in runs)
    n = max(1, len(present) + int(with_loss))
    fig = _new_figure(4.2 * n + 0.6, 4.0)
    axes = fig.subplots(1, n, squeeze=False)[0]
    fig.subplots_adjust(wspace=0.25, **_inches_to_fraction(fig, 0.55 + 0.25 * math.ceil(len(runs) / 4), 0.5, 0.55,
                                                              0.2))
    span = step_range(runs)
    for ax, metric in zip(axes, present):
        _panel(ax, runs, metric, prefix, span=span)
        ax.set_xlabel("step", fontsize=9)
    if with_loss:
        _panel(axes[len(present)], runs, None, prefix, loss=True, span=span)
        axes[len(present)].set_xlabel("step", fontsize=9)
    for ax in axes[:n]:  # the first alert, whatever metric it fired on, on every panel
        _mark_first_alerts(ax, runs)
    _legend(fig, runs, prefix, first_alerts=any(first_alert(d) is not None for d in runs))
    _save(fig, path)
    return fig


def metrics_figure(runs: List[RunData], prefix: str, path: str) -> Any:
    """One panel per metric logged by any of ``runs``, in order of importance, three per row, written to ``path``.
    Returns the matplotlib ``Figure``."""
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
    span = step_range(runs)
    for i, metric in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        _panel(ax, runs, metric, prefix, span=span)
        if i + ncols >= n:  # the lowest panel of its column
            ax.set_xlabel("step", fontsize=9)
            ax.xaxis.set_tick_params(labelbottom=True)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    _legend(fig, runs, prefix)
    _save(fig, path)
    return fig


def alignment_uniformity_pairs(data: RunData, prefix: str) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
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


def alignment_figure(runs: List[RunData], prefix: str, path: str) -> None:
    """Every run's trajectory in the alignment–uniformity plane on one axes per tap (a colour per run, the point
    size growing with the step)."""
    taps = sorted({t for d in runs for t in alignment_uniformity_pairs(d, prefix)})
    n = len(taps)
    fig = _new_figure(5.6 * n, 4.8)
    axes = fig.subplots(1, n, squeeze=False)[0]
    fig.subplots_adjust(wspace=0.3, **_inches_to_fraction(fig, 0.7, 0.6, 0.8, 0.2))
    for ax, tap in zip(axes, taps):
        for r, data in enumerate(runs):
            pair = alignment_uniformity_pairs(data, prefix).get(tap)
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
        ax.set_title(_plain(f"tap {tap}: alignment vs uniformity"), fontsize=10)
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


def spectrum_figure(runs: List[RunData], prefix: str, path: str) -> None:
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
        tap = (parse_key(key, prefix) or ("?", ""))[0]
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
            ax.set_title(_plain(f"{who}: spectrum over time"), fontsize=10)
        else:
            ax.plot(np.arange(1, logm.shape[0] + 1), logm[:, 0], color=TAP_COLORS[0], marker=".", lw=1.4)
            ax.set_ylim(vmin, vmax)
            ax.set_xlabel("eigenvalue rank (1 = largest)", fontsize=9)
            ax.set_ylabel(r"$\log_{10}$ eigenvalue", fontsize=9)
            ax.set_title(_plain(f"{who}: spectrum at step {int(steps[0])} (the only one recorded)"), fontsize=10)
            ax.grid(True, alpha=0.3)
    for j in range(n, axes.size):
        axes[j // 2][j % 2].set_visible(False)
    if mesh is not None:
        cax = fig.add_axes([1 - 1.05 / fig.get_size_inches()[0], 0.15, 0.18 / fig.get_size_inches()[0], 0.7])
        fig.colorbar(mesh, cax=cax, label=r"$\log_{10}$ eigenvalue (same scale for every panel)")
    _save(fig, path)

