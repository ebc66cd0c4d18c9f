"""A change of regime (``kind="regime_change"``, an ``info`` event that is never open) is reported, and is not a
collapse alert in any sink: the alert count stays 0 and the alert state ``ok`` (TensorBoard read back with
EventAccumulator, a real MLflow SQLite store, W&B offline read back from its .wandb file)."""
from __future__ import annotations

import glob

import pytest
import torch
import wandb_files
from wandb_files import offline_runs

import spherewatch as sw
from spherewatch.keys import alert_count_key
from spherewatch.sinks.tensorboard import alert_level_key

wandb_env = wandb_files.wandb_env  # the fixture: offline W&B under tmp_path


def _regime_change(mon):
    """Isotropic rows, then (from step 6) the same rows around an offset: uniformity -3.5 -> -2.2 in one step, held."""
    g = torch.Generator().manual_seed(0)
    for step in range(12):
        z = torch.randn(256, 16, generator=g)
        mon.observe(z + 0.8 * torch.ones(16) if step >= 6 else z)
        mon.step(step)


def _only_the_regime_event(memory):
    events = [(a.rule, a.kind, a.severity) for a in memory.alerts]
    assert events == [("uniformity_regime", "regime_change", "info")]


def test_tensorboard_and_mlflow_neither_count_nor_open_a_change_of_regime(tmp_path, mlflow_uri, artifact_dir):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    memory = sw.sinks.MemorySink()
    mon = sw.Monitor(sinks=("tensorboard", "mlflow", memory), every_n_steps=1, warn=False, log_dir=str(tmp_path / "tb"),
                     tracking_uri=mlflow_uri)
    _regime_change(mon)
    mon.close()
    _only_the_regime_event(memory)

    acc = EventAccumulator(glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents.*"), recursive=True)[0])
    acc.Reload()
    assert {e.value for e in acc.Scalars(alert_count_key("spherewatch"))} == {0.0}
    assert {e.value for e in acc.Scalars(alert_level_key("spherewatch"))} == {0.0}

    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("spherewatch").experiment_id])
    assert run.data.tags["spherewatch.alert_state"] == "ok"
    assert "spherewatch.first_alert_step" not in run.data.tags
    counts = client.get_metric_history(run.info.run_id, alert_count_key("spherewatch"))
    assert {m.value for m in counts} == {0.0}


def test_wandb_neither_counts_nor_opens_a_change_of_regime(wandb_env):
    pytest.importorskip("wandb")
    memory = sw.sinks.MemorySink()
    mon = sw.Monitor(sinks=("wandb", memory), every_n_steps=1, warn=False, log_dir=str(wandb_env / "sw"),
                     alert_channels=("wandb",))
    _regime_change(mon)
    mon.close()
    _only_the_regime_event(memory)
    (got,) = offline_runs(wandb_env)
    assert got.summary["spherewatch/alert_state"] == "ok"
    assert {row[alert_count_key("spherewatch")] for row in got.history if alert_count_key("spherewatch") in row} == {0}
