"""Issue 22 row 13, MLflow part: many alerts neither grow the sink's memory nor rewrite an ever larger
``alerts.json``. The sink keeps a bounded part of them (the open part of the artifact, the first alerts for the
verdict, the latest ids for duplicates); a full part is sealed once into its own artifact, and the report reads the
parts and ``alerts.json`` back as one list, in order. A real MLflow SQLite store; the part size is lowered to keep
the test short."""
from __future__ import annotations

import gc
import tracemalloc

import pytest

from spherewatch.alerts.alert import Alert
from spherewatch.report.load import load_run

pytestmark = pytest.mark.timeout(300)
U = "spherewatch/uniformity"


def test_many_alerts_keep_the_sinks_memory_flat_and_the_report_reads_them_all(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    import spherewatch.sinks.mlflow as mod

    for name, value in (("ALERTS_PER_PART", 100), ("KEEP_ALERTS", 50), ("KEEP_ALERT_IDS", 100)):
        monkeypatch.setattr(mod, name, value, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = mod.MLflowSink(uri, experiment_name="alert-volume", artifact_interval=0.0)
    sink.log_scalars(0, {U: -3.0})
    uploads = []
    real = sink.client.log_text
    sink.client.log_text = lambda run_id, text, path: (uploads.append((path, len(text))), real(run_id, text, path))[1]

    def fire(steps):
        for step in steps:
            sink.log_alert(Alert(rule="uniformity_degradation", key=U, value=-1.0 - step / 1000, step=step,
                                 severity="warning", time=1000.0 + step, message=f"{step} " + "x" * 4000))
            sink.flush()

    fire(range(0, 150))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    fire(range(150, 450))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    sink.close()
    assert grown < 600 * 1024, grown  # 300 alerts of 4 KB more: kept per alert, only the bounded parts
    assert max(n for path, n in uploads if path == "spherewatch/alerts.json") < 100 * 5000  # one part at most
    parts = sorted({path for path, _ in uploads if path != "spherewatch/alerts.json"})
    assert len(parts) == 4 and all(p.startswith("spherewatch/alerts-") for p in parts)
    data = load_run(sink.run_id, tracking_uri=uri)
    assert [a.step for a in data.alerts] == list(range(450))  # every alert, once, in order
    assert len(MlflowClient(uri).list_artifacts(sink.run_id, "spherewatch")) >= 5
