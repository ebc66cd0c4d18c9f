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

The package, one job per module:

* :mod:`~spherewatch.report.rundata`: :class:`RunData`, what a report is made of, and the key helpers;
* :mod:`~spherewatch.report.load`: :func:`load_run` and the JSONL, TensorBoard and MLflow readers;
* :mod:`~spherewatch.report.records`: the sink formats the readers decode (imported in this one place);
* :mod:`~spherewatch.report.run_verdict`: :func:`verdict`, the one verdict (:mod:`spherewatch.alerts.verdict`)
  on a run read back;
* :mod:`~spherewatch.report.thresholds`: the fixed thresholds of the run's rules, for the figures;
* :mod:`~spherewatch.report.figures`: the PNG figures (:func:`overview_figure` and the others);
* :mod:`~spherewatch.report.page`: the HTML page;
* :mod:`~spherewatch.report.build`: :func:`build_report`, which puts them together.
"""
from spherewatch.report.build import build_report
from spherewatch.report.figures import overview_figure
from spherewatch.report.load import load_run
from spherewatch.report.run_verdict import verdict
from spherewatch.report.rundata import RunData

__all__ = ["RunData", "build_report", "load_run", "overview_figure", "verdict"]
