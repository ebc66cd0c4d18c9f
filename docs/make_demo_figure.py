"""Regenerate docs/demo_overview.png, the README figure, from a fresh `spherewatch demo` (about 20 s, on CPU).

    python docs/make_demo_figure.py            # runs the demo in a temporary folder, then draws the figure
    python docs/make_demo_figure.py runs       # draws it from the runs an earlier `spherewatch demo` left in ./runs

It prints what the README's caption must say (tests/test_readme.py checks the caption against a demo run).
"""
import io
import os
import sys
import tempfile

from spherewatch.alerts.verdict import collapse_alerts
from spherewatch.demo import DEMO_RUNS, run_demo
from spherewatch.report import load_run, overview_figure
from spherewatch.report.thresholds import threshold_lines


def draw(root: str, out: str) -> None:
    runs = []
    for name, _ in DEMO_RUNS:
        data = load_run(os.path.join(root, name, "spherewatch.jsonl"))
        data.name = name
        runs.append(data)
    overview_figure(runs, out, loss=False)  # two panels: uniformity and effective rank, healthy vs collapsing
    alerts = collapse_alerts(runs[1].alerts)
    first = {sev: min((a.step for a in alerts if a.severity == sev), default=None) for sev in ("warning", "critical")}
    lines = [(name, value) for name, metric, _, value in threshold_lines(runs[1]) if metric == "uniformity"]
    print(out)
    print(f"caption: warning at step {first['warning']}, critical at step {first['critical']}; "
          f"dashed line: {lines}")


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_overview.png")
    if len(sys.argv) > 1:
        draw(sys.argv[1], out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run_demo(log_dir=os.path.join(tmp, "runs"), tracking_uri=f"sqlite:///{tmp}/mlflow.db", report_dir=None,
                     progress=False, out=io.StringIO())
            draw(os.path.join(tmp, "runs"), out)
