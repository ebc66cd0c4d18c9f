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


def test_demo_at_reduced_size_alerts_on_the_collapsing_run_only(tmp_path):
    out = subprocess.run(
        CLI + ["demo", "--steps", "120", "--every", "20", "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "simsiam-healthy: none" in text
    assert "simsiam-no-stopgrad: step" in text and "uniformity" in text
    assert "tensorboard --logdir runs" in text and "mlflow ui --backend-store-uri sqlite:///mlflow.db" in text
    assert (tmp_path / "mlflow.db").exists()
    for run in ("simsiam-healthy", "simsiam-no-stopgrad"):
        assert list((tmp_path / "runs" / run).glob("events.out.tfevents.*")), run
        assert (tmp_path / "runs" / run / "spherewatch.jsonl").exists()
        assert (tmp_path / "spherewatch_report" / run / "report.html").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("spherewatch-demo")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["simsiam-healthy", "simsiam-no-stopgrad"]
    for r in runs:
        assert "spherewatch/embeddings/uniformity" in r.data.metrics
