"""Lightning DDP on CPU (2 processes, gloo): the global metric equals the single-process metric on the concatenated
rows, a stop fires on every rank at the same step, and only rank zero writes."""
import json
import os
import subprocess
import sys

import pytest
import torch

import spherewatch.metrics as M

SCRIPT = os.path.join(os.path.dirname(__file__), "_lightning_ddp_script.py")


@pytest.mark.timeout(300)
def test_lightning_ddp_global_metrics_stop_and_rank_zero_logging(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, SCRIPT, str(tmp_path), "12"], capture_output=True, text=True,
                         timeout=280, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    finals = [json.loads((tmp_path / f"final_{r}.json").read_text()) for r in (0, 1)]
    rows = [torch.load(tmp_path / f"rows_{r}.pt") for r in (0, 1)]
    # the same stop decision everywhere, at the first evaluation after the collapse (steps are 1-based in Lightning)
    assert finals[0]["global_step"] == finals[1]["global_step"] == 14
    assert finals[0]["should_stop"] and finals[1]["should_stop"]
    # rank zero logs, rank one does not
    history = finals[0]["history"]
    assert history and finals[1]["history"] == {}
    # the logged value at step s is the metric of both ranks' rows of step s, concatenated (5 + 9 rows)
    key = "spherewatch/uniformity"
    checked = 0
    for step, value in history[key]:
        z = torch.cat([rows[0][step], rows[1][step]])
        assert z.shape[0] == 14
        assert value == pytest.approx(M.uniformity(z).item(), rel=1e-5, abs=1e-6)
        checked += 1
    assert checked >= 5
    er = dict(history["spherewatch/effective_rank"])
    s = history[key][2][0]
    assert er[s] == pytest.approx(M.effective_rank(torch.cat([rows[0][s], rows[1][s]])).item(), rel=1e-5)
