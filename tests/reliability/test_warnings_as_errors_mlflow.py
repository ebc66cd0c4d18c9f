"""Issue 22 row 6, second half: under ``python -W error`` a healthy SQLite MLflow sink opens and gets every point
(a dependency's deprecation warning inside the sink's opening is shown, not raised); the user's own warnings still
raise."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(300)

SCRIPT = textwrap.dedent("""
    import sys, warnings
    import spherewatch as sw
    mon = sw.Monitor(sinks=("mlflow",), tracking_uri=sys.argv[1], experiment_name="w-error", run_name="w",
                     log_dir="runs", warn=False)
    for step in range(10):
        mon.log(step, {"train/loss": float(step)})
    mon.flush()
    print("run", mon.sink("mlflow").run_id)
    mon.close()
    print("faults", dict(mon.faults))
    try:
        warnings.warn("the user's own", DeprecationWarning)
    except DeprecationWarning:
        print("user warnings still raise")
""")


def test_a_healthy_sqlite_mlflow_sink_opens_under_warnings_as_errors(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = subprocess.run([sys.executable, "-W", "error", "-c", SCRIPT, uri], capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
    assert lines["faults"] == "{}", res.stderr[-3000:]
    assert "user warnings still raise" in res.stdout
    history = MlflowClient(uri).get_metric_history(lines["run"], "train/loss")
    assert sorted(m.step for m in history) == list(range(10))
