"""The host loops' own W&B runs get every spherewatch point and alert once (offline, read back from the run's .wandb
file): Lightning's ``WandbLogger`` and the HF ``Trainer`` with ``report_to=["wandb"]``; never a second run."""
from __future__ import annotations

import pytest

pytest.importorskip("wandb")

import wandb_files  # noqa: E402
from wandb_files import evaluations, offline_runs  # noqa: E402

from spherewatch.sinks import MemorySink, WandbSink  # noqa: E402

wandb_env = wandb_files.wandb_env  # the fixture: offline W&B under tmp_path

STEP = "spherewatch/step"
ALWAYS = {"kind": "threshold", "metric": "mean_cosine", "above": -1.0}  # fires at the first evaluation, stays open


def _check_one_host_run(wandb_dir, memory, host_key):
    runs = offline_runs(wandb_dir)
    assert len(runs) == 1 and len(runs[0].run_ids) == 1  # the host's run, no second one
    got = runs[0]
    rows = evaluations(got)
    assert [row[STEP] for row in rows] == [step for step, _ in memory.scalars]  # every evaluation once, in order
    for row, (step, values) in zip(rows, memory.scalars):
        for key, value in values.items():
            assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (step, key)
    assert got.rows_with(host_key)  # the host's own points are there too
    fired = [a for a in memory.alerts if a.status == "fired" and a.count == 1 and a.kind == "collapse"]
    assert len(fired) == 1 and len(got.alerts) == 1  # a condition that stays open: one W&B alert
    assert got.alerts[0].title.startswith("spherewatch warning: ")
    assert got.summary["spherewatch/alert_state"] == "warning"
    return got


def test_lightning_wandb_logger_run_gets_every_point_and_the_alert_once(tmp_path, wandb_env):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import WandbLogger
    from lightning_tiny import Tiny, loader

    from spherewatch.integrations.lightning import MonitorCallback

    memory = MemorySink()
    logger = WandbLogger(project="host", save_dir=str(tmp_path), offline=True)
    cb = MonitorCallback(module_path="encoder", every_n_steps=2, warn=False, sinks=[memory], rules=[ALWAYS],
                         alert_channels=("wandb",))
    trainer = pl.Trainer(accelerator="cpu", devices=1, callbacks=[cb], logger=logger, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, max_epochs=2,
                         enable_checkpointing=False)
    trainer.fit(Tiny(), loader())
    assert any(isinstance(s, WandbSink) and s.run is logger.experiment for s in cb.monitor.sinks)
    logger.experiment.finish()
    _check_one_host_run(wandb_env, memory, "train_loss")


def test_hf_trainer_report_to_wandb_run_gets_every_point_and_the_alert_once(tmp_path, wandb_env, monkeypatch):
    import torch
    import wandb
    from transformers import BertConfig, BertModel, Trainer, TrainingArguments

    from spherewatch.integrations.hf import MonitorTrainerCallback

    class Model(torch.nn.Module):  # a tiny config-built BERT with a regression head
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=32))
            self.head = torch.nn.Linear(32, 1)

        def forward(self, input_ids, labels=None):
            pred = self.head(self.bert(input_ids=input_ids).pooler_output).squeeze(-1)
            return {"loss": torch.nn.functional.mse_loss(pred, labels), "logits": pred}

    ids = torch.randint(1, 100, (64, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": ids[i], "labels": ids[i, 1].float() / 100} for i in range(64)]

    def train(tmp_path, callback, report_to):
        args = TrainingArguments(output_dir=str(tmp_path), report_to=report_to, per_device_train_batch_size=8,
                                 logging_steps=2, use_cpu=True, disable_tqdm=True, seed=0, max_steps=8,
                                 save_strategy="no")
        Trainer(model=Model(), args=args, train_dataset=data, callbacks=[callback]).train()

    monkeypatch.setenv("WANDB_PROJECT", "host")
    memory = MemorySink()
    cb = MonitorTrainerCallback(module_path="bert.pooler", tap="pooler", every_n_steps=2, warn=False, sinks=[memory],
                                rules=[ALWAYS], alert_channels=("wandb",))
    train(tmp_path, cb, report_to=["wandb"])
    assert any(isinstance(s, WandbSink) and s.run is wandb.run for s in cb.monitor.sinks)
    wandb.run.finish()
    _check_one_host_run(wandb_env, memory, "train/loss")  # HF's own key, beside train/global_step


def test_naming_the_wandb_sink_beside_a_wandb_logger_logs_each_point_once(tmp_path, wandb_env):
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.loggers import WandbLogger

    from spherewatch.integrations.lightning import MonitorCallback

    logger = WandbLogger(project="host", save_dir=str(tmp_path), offline=True)
    cb = MonitorCallback(module_path="layer", every_n_steps=2, warn=False, sinks=["wandb"])
    trainer = pl.Trainer(accelerator="cpu", devices=1, callbacks=[cb], logger=logger, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, max_steps=8,
                         enable_checkpointing=False, limit_val_batches=0)
    torch.manual_seed(0)
    trainer.fit(BoringModel())
    assert [getattr(s, "name", None) for s in cb.monitor.sinks] == ["wandb"]
    logger.experiment.finish()
    (got,) = offline_runs(wandb_env)
    assert [row[STEP] for row in evaluations(got)] == [1, 2, 4, 6, 8]  # each once (evaluations asserts no repeat)
