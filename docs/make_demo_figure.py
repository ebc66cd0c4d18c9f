"""Regenerate docs/demo_overview.png (the README figure) from the runs `spherewatch demo` wrote in ./runs.

    spherewatch demo && python docs/make_demo_figure.py
"""
import os
import sys

from spherewatch.demo import DEMO_RUNS
from spherewatch.report import load_run, overview_figure

root = sys.argv[1] if len(sys.argv) > 1 else "runs"
runs = []
for name, _ in DEMO_RUNS:
    data = load_run(os.path.join(root, name, "spherewatch.jsonl"))
    data.name = name
    runs.append(data)
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_overview.png")
overview_figure(runs, out, loss=False)  # two panels: uniformity and effective rank, healthy vs collapsing
print(out)
