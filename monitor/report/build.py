"""Build a report (:func:`build_report`): read the runs, draw the figures, write the page.

Example::

    from spherewatch.report import build_report
    build_report("runs/exp1/spherewatch.jsonl", "report_exp1")["html"]   # 'report_exp1/report.html'
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from spherewatch.report.figures import (
    alignment_figure,
    alignment_uniformity_pairs,
    metrics_figure,
    overview_figure,
    spectrum_figure,
)
from spherewatch.report.load import load_run
from spherewatch.report.page import embed_png, render_page
from spherewatch.report.run_verdict import verdict
from spherewatch.report.rundata import ACCEPTED, own_keys

__all__ = ["FIGURE_NAMES", "build_report"]

logger = logging.getLogger("spherewatch.report")

FIGURE_NAMES = ("overview.png", "metrics.png", "alignment_uniformity.png", "spectrum.png")


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
    if any(own_keys(d.scalars, prefix) for d in runs):
        path = os.path.join(out_dir, "overview.png")
        overview_figure(runs, path, prefix=prefix)
        figures.append(path)
        sections.append(("Collapse overview", embed_png(path, "uniformity, effective rank and training loss per run")))
        path = os.path.join(out_dir, "metrics.png")
        metrics_figure(runs, prefix, path)
        figures.append(path)
        sections.append(("All metrics", embed_png(path, "metric curves with alert markers")))
    else:
        sections.append(("All metrics", '<p class="missing">No scalar metrics were logged.</p>'))

    if any(alignment_uniformity_pairs(d, prefix) for d in runs):
        path = os.path.join(out_dir, "alignment_uniformity.png")
        alignment_figure(runs, prefix, path)
        figures.append(path)
        sections.append(("Alignment and uniformity", embed_png(path, "trajectory in the alignment-uniformity plane")))
    else:
        sections.append(("Alignment and uniformity", (
            '<p class="missing" id="no-alignment">Alignment was not logged (it needs the paired view: '
            "<code>observe(z, z_pos)</code>) together with uniformity, so there is no alignment–uniformity "
            "trajectory.</p>")))

    if any(d.spectra for d in runs):
        path = os.path.join(out_dir, "spectrum.png")
        spectrum_figure(runs, prefix, path)
        figures.append(path)
        over_time = any(len(series) > 1 for d in runs for series in d.spectra.values())
        heading = "Spectrum over time" if over_time else "Spectrum (one step recorded)"
        sections.append((heading, embed_png(path, "eigenvalue spectrum")))
    else:
        sections.append(("Spectrum over time", (
            '<p class="missing" id="no-spectrum">No spectrum was logged (enable the <code>spectrum</code> '
            'metric, e.g. <code>preset="full"</code>), so there is no spectrum over time.</p>')))

    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(render_page(runs, sections, prefix))
    logger.info("spherewatch report: wrote %s and %d figure(s).", html_path, len(figures))
    return {"html": html_path, "figures": figures, "verdicts": {d.name: verdict(d, prefix) for d in runs}}
