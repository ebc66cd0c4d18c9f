"""MonitorTrainerCallback in a real transformers.Trainer (a tiny BertConfig model built from config, CPU)."""
from __future__ import annotations

import glob
import json
import os
import time

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.trainer_callback import ExportableState

from spherewatch import Monitor
from spherewatch.integrations.hf import MonitorTrainerCallback
from spherewatch.sinks import MemorySink

STOP_ON_ANYTHING = {"kind": "threshold", "metric": "mean_cosine", "above": -1.0, "action": "stop"}
LOG_ONCE = {"kind": "threshold", "metric": "mean_cosine", "above": -1.0}  # fires once, then stays firing


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, constant: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.full((n, 12), 7) if constant else torch.randint(1, 100, (n, 12), generator=g)
        self.labels = (self.ids[:, 1] >= 50).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def train(tmp_path, callback, *, report_to=(), resume=None, eval_data=None, extra_callbacks=(), **kw):
    kw.setdefault("max_steps", 8)
    kw.setdefault("save_strategy", "no")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=list(report_to), per_device_train_batch_size=8,
                             logging_steps=2, use_cpu=True, disable_tqdm=True, seed=0, **kw)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=TokenData(), eval_dataset=eval_data,
                      callbacks=[*extra_callbacks, callback])
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_is_an_exportable_state_whose_state_is_json():
    cb = MonitorTrainerCallback(module_path="bert.pooler", tap="pooler", every_n_steps=3, rules=[LOG_ONCE])
    assert isinstance(cb, ExportableState)
    state = json.loads(json.dumps(cb.state()))
    clone = MonitorTrainerCallback.from_state(state)
    assert clone.config == cb.config and clone.tap == "pooler" and clone.module_path == "bert.pooler"


def test_tensorboard_scalars_go_into_the_trainers_event_file(tmp_path):
    cb = MonitorTrainerCallback(module_path="bert.pooler", tap="pooler", every_n_steps=3, warn=False)
    train(tmp_path, cb, report_to=["tensorboard"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
    assert len(files) == 1, files
    acc = EventAccumulator(files[0])
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]  # HF's own scalars, same file
    assert [e.step for e in acc.Scalars("spherewatch/pooler/uniformity")] == [1, 3, 6]
    assert not glob.glob(str(tmp_path / "**" / "*.jsonl"), recursive=True)


class SlowSink(MemorySink):
    """A user's sink whose first write takes 0.5 s: the writer thread lags behind this 8-step run."""

    def log_scalars(self, step, values):
        if not self.keys():
            time.sleep(0.5)
        super().log_scalars(step, values)


@pytest.mark.parametrize("stop", ["max_steps", "early stopping"])
def test_everything_reaches_the_trainers_writer_before_hf_closes_it(tmp_path, stop, monkeypatch):
    # HF's TensorBoardCallback comes first in the callback list and closes its writer in on_train_end: a point the
    # writer thread hands it after that would go into a second event file (torch reopens a closed SummaryWriter)
    kw = {}
    if stop == "early stopping":  # should_training_stop set in on_evaluate after step 4, not by max_steps
        from transformers import TrainerCallback

        class StopAt4(TrainerCallback):  # what EarlyStoppingCallback does, at a known step
            def on_evaluate(self, args, state, control, **kwargs):
                control.should_training_stop = state.global_step >= 4

        kw = {"eval_data": TokenData(8), "eval_strategy": "steps", "eval_steps": 2, "extra_callbacks": [StopAt4()]}
    waits = []  # the end of training waits close_timeout in all (this flush and close() share it), not twice

    def spy(name):
        call = getattr(Monitor, name)

        def wrapper(self, timeout=None):
            waits.append((name, timeout))
            return call(self, timeout)
        return wrapper

    monkeypatch.setattr(Monitor, "flush", spy("flush"))
    monkeypatch.setattr(Monitor, "close", spy("close"))
    slow = SlowSink()
    cb = MonitorTrainerCallback(module_path="bert.pooler", tap="pooler", every_n_steps=3, sinks=[slow], warn=False,
                                close_timeout=20.0)
    trainer = train(tmp_path, cb, report_to=["tensorboard"], **kw)
    assert [name for name, _ in waits] == ["flush", "close"] and waits[0][1] == 20.0 and 0 <= waits[1][1] <= 20.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
    assert len(files) == 1, files
    acc = EventAccumulator(files[0])
    acc.Reload()
    expected = [1, 3] if stop == "early stopping" else [1, 3, 6]
    assert trainer.state.global_step == (4 if stop == "early stopping" else 8)
    assert [e.step for e in acc.Scalars("spherewatch/pooler/uniformity")] == expected
    assert [s for s, _ in slow.history("spherewatch/pooler/uniformity")] == expected


def test_mlflow_scalars_go_into_the_trainers_run_and_no_second_run(tmp_path, mlflow_uri, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    cb = MonitorTrainerCallback(module_path="bert.encoder.layer.1", tap="layer1", every_n_steps=4, warn=False)
    train(tmp_path, cb, report_to=["mlflow"])
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert "train_loss" in runs[0].data.metrics or "loss" in runs[0].data.metrics  # HF's own metrics
    history = client.get_metric_history(run_id, "spherewatch/layer1/effective_rank")
    assert sorted(m.step for m in history) == [1, 4, 8]


def test_stop_rule_stops_training(tmp_path):
    cb = MonitorTrainerCallback(module_path="bert.pooler", every_n_steps=5, rules=[STOP_ON_ANYTHING], warn=False)
    trainer = train(tmp_path, cb)
    assert trainer.state.global_step == 1
    assert [a.action for a in cb.monitor.alerts] == ["stop"]


def test_evaluation_passes_are_never_captured(tmp_path):
    mem = MemorySink()
    cb = MonitorTrainerCallback(module_path="bert.pooler", every_n_steps=1, sinks=[mem], warn=False)
    train(tmp_path, cb, eval_data=TokenData(16, constant=True), eval_strategy="steps", eval_steps=1,
          per_device_eval_batch_size=16)
    history = mem.history("spherewatch/mean_cosine")  # a captured constant batch would read ~1
    assert [s for s, _ in history] == list(range(1, 9)) and max(v for _, v in history) < 0.99


def test_resume_with_restored_callback_state_matches_an_uninterrupted_run(tmp_path, assert_same_state):
    alerts = []

    def make():
        return MonitorTrainerCallback(module_path="bert.pooler", tap="pooler", every_n_steps=3, rules=[LOG_ONCE],
                                      warn=False, on_alert=alerts.append)

    full = make()
    common = dict(max_steps=10, save_strategy="steps", save_steps=5, restore_callback_states_from_checkpoint=True)
    train(tmp_path / "full", full, **common)
    ckpt = tmp_path / "full" / "checkpoint-5"
    stored = json.loads((ckpt / "trainer_state.json").read_text())["stateful_callbacks"]["MonitorTrainerCallback"]
    assert stored["attributes"]["monitor_state"]["last_step"] == 5
    assert "webhook_url" not in stored["args"]["config"]

    live = make()
    trainer = train(tmp_path / "resumed", live, resume=str(ckpt), **common)
    (restored,) = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, MonitorTrainerCallback)]
    assert restored is not live and restored._on_alert is live._on_alert  # HF rebuilt it; settings adopted
    assert_same_state(full.monitor.state_dict(), restored.monitor.state_dict())
    assert [(a.rule, a.step) for a in alerts] == [("mean_cosine_threshold", 1)]  # fired once, in the first run


def test_unknown_module_path_fails_with_close_matches(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'bert.pooler"):
        train(tmp_path, MonitorTrainerCallback(module_path="bert.pooler.dens"))


def test_without_host_loggers_writes_jsonl_under_output_dir(tmp_path):
    cb = MonitorTrainerCallback(module_path="bert.pooler", every_n_steps=4, warn=False)
    train(tmp_path, cb, max_steps=4)
    path = tmp_path / "spherewatch" / "spherewatch.jsonl"
    assert path.is_file() and os.path.getsize(path) > 0
