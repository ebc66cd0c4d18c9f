"""Issue 22 row 13: text taken from a run (its file name, a tap in a foreign key) is drawn as it is, never parsed as
matplotlib mathtext: a `$...$` in it used to make `spherewatch report` exit 2."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import spherewatch as sw


def test_dollar_signs_in_run_names_and_taps_are_drawn_not_parsed(tmp_path):
    pytest.importorskip("matplotlib")
    with sw.Monitor(every_n_steps=5, sinks=("jsonl",), log_dir=str(tmp_path), preset="cheap", warn=False) as mon:
        g = torch.Generator().manual_seed(0)
        for step in range(20):
            mon.observe(torch.randn(64, 8, generator=g), tap="enc")
            mon.step(step)
    text = (tmp_path / "spherewatch.jsonl").read_text()
    hostile = tmp_path / "run $x^$ {.jsonl"  # invalid mathtext: '^' without an argument
    hostile.write_text(text.replace("spherewatch/enc/", "spherewatch/$\\\\frac{x$/"))
    res = subprocess.run([sys.executable, "-m", "spherewatch", "report", str(hostile), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "run $x^$ {" in page  # the run's name, as written
