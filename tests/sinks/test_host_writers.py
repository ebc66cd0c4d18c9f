"""The host's own writers keep working while the monitor's writer thread writes through them: a host
``SummaryWriter`` the training thread also logs to, and the host's active MLflow run (thread-local in MLflow, so it
is resolved on the training thread and written to by run id)."""
import threading

import pytest
import torch

import spherewatch as sw
from spherewatch.sinks import TensorBoardSink

U = "spherewatch/uniformity"


def _train(mon, steps, log):
    g = torch.Generator().manual_seed(0)
    for step in steps:
        mon.observe(torch.randn(32, 8, generator=g))
        log(step)
        mon.step(step)


def test_host_summary_writer_gets_host_and_monitor_scalars_from_two_threads(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "host"))
    threads = set()
    file_writer = writer._get_file_writer()  # host add_scalar and the sink's described summaries both end here
    real = file_writer.add_summary

    def add_summary(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return real(*args, **kwargs)

    file_writer.add_summary = add_summary
    mon = sw.Monitor(sinks=[TensorBoardSink(writer=writer)], every_n_steps=1, warn=False, log_dir=str(tmp_path))
    _train(mon, range(30), lambda step: writer.add_scalar("train/loss", 1.0 / (step + 1), step))
    mon.close()
    writer.close()  # the host owns its writer: the monitor flushed it, never closed it
    assert threads == {"MainThread", "spherewatch-writer"}
    events = EventAccumulator(str(tmp_path / "host"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(30))
    assert [e.step for e in events.Scalars(U)] == list(range(30))


def test_the_hosts_active_mlflow_run_is_logged_to_from_the_writer_thread(mlflow_uri, artifact_dir, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # (mlflow.set_tracking_uri would leak into later tests)
    experiment = mlflow.create_experiment("host-run", artifact_location=str(artifact_dir))
    with mlflow.start_run(experiment_id=experiment) as run:
        mon = sw.Monitor(sinks=("mlflow",), every_n_steps=2, warn=False, sample_first_step=False)
        _train(mon, range(10), lambda step: mlflow.log_metric("train/loss", 1.0 / (step + 1), step=step))
        mon.close()
        assert mlflow.active_run().info.run_id == run.info.run_id  # the host's run is still the active one
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # no second run beside the host's
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, U)) == [0, 2, 4, 6, 8]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 10
