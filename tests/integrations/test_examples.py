"""Every examples/*.py runs as a script on a small setting (started together, in subprocesses)."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUNS = {
    "plain_torch.py": ["--steps", "25", "--log-dir", "out"],
    "lightning_simclr.py": ["--max-steps", "25", "--root", "out"],
    "hf_trainer.py": ["--max-steps", "25", "--output-dir", "out"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start every example at once (each pays its own framework import), then collect them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    started = {}
    for name, args in RUNS.items():
        cwd = tmp_path_factory.mktemp(name.replace(".py", ""))
        proc = subprocess.Popen([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started[name] = (proc, cwd)
    done = {}
    try:
        for name, (proc, cwd) in started.items():
            out, _ = proc.communicate(timeout=240)
            done[name] = (proc.returncode, out, cwd)
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs_and_logs_to_tensorboard(runs, name):
    code, out, cwd = runs[name]
    assert code == 0, out[-3000:]
    key = "spherewatch/pooler/uniformity" if name == "hf_trainer.py" else "spherewatch/uniformity"
    assert f"{key} = " in out
    assert glob.glob(str(cwd / "out" / "**" / "events.out.tfevents.*"), recursive=True)
