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
from spherewatch.keys import parse_key
from spherewatch.report import load_run, overview_figure
from spherewatch.report.thresholds import threshold_lines


def draw(root: str, out: str) -> None:
    runs = []
    for name, _ in DEMO_RUNS:
        data = load_run(os.path.join(root, name, "spherewatch.jsonl"))
        data.name = name
        runs.append(data)
    overview_figure(runs, out, loss=False)  # two panels: uniformity and effective rank, healthy vs collapsing
    print(out)
    print("README caption (paste between the asterisks):")
    print(caption(runs[0], runs[1]))


def caption(healthy, collapsing) -> str:
    """The README figure's caption, from the demo's two runs (the facts tests/test_readme.py checks)."""
    fired = collapse_alerts(collapsing.alerts)
    first = min(fired, key=lambda a: a.step)
    crit = min(a.step for a in fired if a.severity == "critical")

    def steps(metric):
        got = sorted(a.step for a in fired if parse_key(a.key)[1] == metric)
        return ", ".join(map(str, got)) if got else "none"

    lines = {metric: f"{metric.replace('_', ' ')} {side} {value:g}"
             for _, metric, side, value in threshold_lines(collapsing) if metric in ("uniformity", "effective_rank")}
    start = healthy.scalars["spherewatch/effective_rank"][0][1]
    end = collapsing.scalars["spherewatch/effective_rank"][-1][1]
    first_metric = parse_key(first.key)[1]
    drawn = "" if first_metric in ("uniformity", "effective_rank") else " (not drawn here)"
    return (f"The demo's two runs (regenerate: `python docs/make_demo_figure.py`). Without stop-gradient, uniformity "
            f"rises toward 0 and the effective rank falls from {start:.0f} to {end:.0f}. The first alert is "
            f"{first_metric}'s at step {first.step}{drawn}, the first critical one at step {crit}. Dots mark the "
            f"alerts on these metrics (uniformity: steps {steps('uniformity')}; effective rank: steps "
            f"{steps('effective_rank')}); dashed lines are fixed thresholds ({', '.join(lines.values())}).")

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_overview.png")
    if len(sys.argv) > 1:
        draw(sys.argv[1], out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run_demo(log_dir=os.path.join(tmp, "runs"), tracking_uri=f"sqlite:///{tmp}/mlflow.db", report_dir=None,
                     progress=False, out=io.StringIO())
            draw(os.path.join(tmp, "runs"), out)
