"""`spherewatch demo` runs with any subset of the optional extras: a missing one is one line saying what was skipped
and which extra brings it, never a traceback. The extras are hidden from a subprocess (``sys.modules[name] = None``
makes ``import name`` fail as if it were not installed)."""
import subprocess
import sys

import pytest

HIDE = "import sys\nfor name in {hidden!r}: sys.modules[name] = None\nfrom spherewatch.cli import main\nraise SystemExit(main({argv!r}))\n"


def run_hidden(hidden, argv, cwd, timeout=300):
    code = HIDE.format(hidden=list(hidden), argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_hidden_module_helper_really_hides(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['mlflow'] = None; import mlflow"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


@pytest.mark.parametrize("hidden, skipped, kept", [
    # the README's install line: only the tensorboard extra
    (("mlflow", "matplotlib"), ("MLflow logging (pip install 'spherewatch[mlflow]')",
                                "the HTML report (pip install 'spherewatch[report]')"), ("tensorboard",)),
    # no extra at all: JSONL only
    (("mlflow", "matplotlib", "tensorboard", "tqdm"),
     ("TensorBoard logging (pip install 'spherewatch[tensorboard]')", "MLflow logging (pip install 'spherewatch[mlflow]')",
      "the HTML report (pip install 'spherewatch[report]')"), ()),
])
def test_demo_runs_with_a_subset_of_the_extras(tmp_path, hidden, skipped, kept):
    done = run_hidden(hidden, ["demo", "--steps", "60", "--every", "10"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stdout, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("skipped:")] == [f"skipped: {what}" for what in skipped]
    assert "collapsed at step" in done.stdout and "simsiam-healthy: none" in done.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "spherewatch_report").exists()
    for run in ("simsiam-healthy", "simsiam-no-stopgrad"):
        assert (tmp_path / "runs" / run / "spherewatch.jsonl").stat().st_size > 0
        events = list((tmp_path / "runs" / run).glob("events.out.tfevents.*"))
        assert len(events) == (1 if "tensorboard" in kept else 0)
    assert ("--logdir runs" in done.stdout) == ("tensorboard" in kept)
    assert "mlflow ui" not in done.stdout and "runs/<run>/spherewatch.jsonl" in done.stdout
