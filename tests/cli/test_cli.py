"""The `spherewatch` command: version, help, metrics table, and the demo at a reduced size."""
import subprocess
import sys

import spherewatch

CLI = [sys.executable, "-m", "spherewatch"]


def test_version_and_help():
    out = subprocess.run(CLI + ["--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"spherewatch {spherewatch.__version__}"
    out = subprocess.run(CLI + ["--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in ("demo", "analyze", "report", "metrics"):
        assert cmd in out.stdout


def test_metrics_table():
    out = subprocess.run(CLI + ["metrics", "--samples", "300", "--dim", "16"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "complete collapse" in out.stdout and "uniformity" in out.stdout


def _demo(cwd):
    out = subprocess.run(CLI + ["demo", "--steps", "60", "--every", "10"], capture_output=True, text=True, timeout=600,
                         cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_demo_tells_the_story_and_a_second_run_shows_the_same(tmp_path):
    import shlex

    from mlflow.tracking import MlflowClient

    from spherewatch.sinks.jsonl import read_jsonl

    first = _demo(tmp_path)
    assert "simsiam-healthy: none" in first
    assert "simsiam-no-stopgrad" in first and "collapsed at step" in first  # the verdict column
    assert "\r" not in first  # no progress bar without a terminal
    assert first.lstrip().startswith("spherewatch demo:")  # no progress line before the header without a terminal
    alerts = first[first.index("Alerts:"): first.index("Where to look")].splitlines()
    assert [line for line in alerts if line.strip().startswith("step ")]
    # lines fit 120 characters; a link is one unbreakable token on a line of its own (MLflow's view URL is ~125)
    assert all(len(line) <= 120 or (line.strip().startswith("http") and " " not in line.strip())
               for line in first.splitlines())
    # each alert with its advice beside it: a metric's group says what it means, lists its alerts, says what to check;
    # no advice is printed twice word for word
    checks = [line.strip() for line in alerts if line.strip().startswith("check:")]
    assert checks and len(set(checks)) == len(checks)
    assert all("possible collapse" not in line or not line.strip().startswith("step") for line in alerts)

    second = _demo(tmp_path)
    assert "replaced the previous demo: 2 MLflow run(s) deleted" in second

    def table(text):
        return [line for line in text.splitlines() if line.startswith("simsiam-")]

    assert table(first) == table(second)  # the same story, not twice the runs
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("spherewatch-demo")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["simsiam-healthy", "simsiam-no-stopgrad"]
    by_name = {r.info.run_name: r for r in runs}
    healthy, collapsing = by_name["simsiam-healthy"].data, by_name["simsiam-no-stopgrad"].data
    assert healthy.tags["spherewatch.alert_state"] == "ok" and healthy.metrics["spherewatch/alerts/count"] == 0
    assert collapsing.tags["spherewatch.worst_severity"] == "critical"
    import re

    first_alert = re.search(r"simsiam-no-stopgrad .*collapsed at step (\d+)", first).group(1)
    assert collapsing.tags["spherewatch.first_alert_step"] == first_alert  # the tag and the table agree
    for data in (healthy, collapsing):
        assert "train/loss" in data.metrics and "spherewatch/uniformity" in data.metrics
        assert data.params["demo.lr"] == "0.05" and data.params["spherewatch.every_n_steps"] == "10"
    assert not by_name["simsiam-healthy"].data.tags["mlflow.note.content"].find("healthy") < 0
    for run in ("simsiam-healthy", "simsiam-no-stopgrad"):
        assert len(list((tmp_path / "runs" / run).glob("events.out.tfevents.*"))) == 1, run  # one event file
        logged = read_jsonl(tmp_path / "runs" / run / "spherewatch.jsonl")
        assert len({(a.rule, a.step) for a in logged["alerts"]}) == len(logged["alerts"])  # no alert twice
        assert "train/loss" in logged["scalars"]
    assert (tmp_path / "spherewatch_report" / "report.html").exists()
    assert f"#/experiments/{exp.experiment_id}/runs" in second

    # the printed commands work as printed
    commands = [line.strip() for line in second.splitlines()
                if line.strip().split(" ")[0].endswith(("tensorboard", "mlflow")) or " -m " in line]
    assert len(commands) == 2, second
    for command in commands:
        argv = shlex.split(command) + ["--help"]  # parses every option, starts no server
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr[-500:])
