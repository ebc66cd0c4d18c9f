"""MonitorCallback in real Lightning fits (tiny models, CPU): loggers, EarlyStopping, stop, checkpoints."""
from __future__ import annotations

import csv
import glob
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from lightning_tiny import Tiny, loader
from torch import nn

from spherewatch.integrations.lightning import MonitorCallback
from spherewatch.sinks import MemorySink

STOP_ON_ANYTHING = {"kind": "threshold", "metric": "mean_cosine", "above": -1.0, "action": "stop"}
LOG_ONCE = {"kind": "threshold", "metric": "mean_cosine", "above": -1.0}  # fires once, then stays firing


def fit(tmp_path, callbacks, *, logger=False, val=None, ckpt_path=None, module=None, **kw):
    kw.setdefault("max_epochs", 1)
    kw.setdefault("enable_checkpointing", False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, callbacks=callbacks, logger=logger, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, **kw)
    trainer.fit(module or Tiny(), loader(), val, ckpt_path=ckpt_path)
    return trainer


def scalar_tags(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    assert len(files) == 1, files  # one event file: the logger's own
    acc = EventAccumulator(files[0])
    acc.Reload()
    return acc


def test_constructor_errors_name_the_fix():
    with pytest.raises(ValueError, match="exactly one of `module_path=`"):
        MonitorCallback()
    with pytest.raises(ValueError, match="exactly one of"):
        MonitorCallback(module_path="encoder", output_key="z")
    with pytest.raises(ValueError, match="pass `output_key=` too"):
        MonitorCallback(module_path="encoder", labels_key="y")
    with pytest.raises(ValueError, match="must differ from the training tap"):
        MonitorCallback(output_key="z", val_tap="embeddings")
    with pytest.raises(ValueError, match="every_n_step"):
        MonitorCallback(output_key="z", every_n_step=5)  # a typo is an error, not a silent default


def test_tensorboard_logger_event_file_gets_training_and_validation_metrics(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="tb")
    cb = MonitorCallback(module_path="encoder", every_n_steps=2, val_tap="val_embeddings", warn=False)
    fit(tmp_path, [cb], logger=tb, val=loader(32), num_sanity_val_steps=1)
    acc = scalar_tags(tb.log_dir)
    tags = acc.Tags()["scalars"]
    assert "train_loss" in tags  # Lightning's own scalars are in the same file
    assert [e.step for e in acc.Scalars("spherewatch/uniformity")] == [1, 2, 4, 6]
    assert [e.step for e in acc.Scalars("spherewatch/val_embeddings/uniformity")] == [6]  # no sanity check
    assert not glob.glob(str(tmp_path / "**" / "*.jsonl"), recursive=True)  # nothing beside the logger


def test_mlflow_logger_run_gets_the_keys_and_no_second_run_is_opened(tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    ml = MLFlowLogger(experiment_name="lightning", tracking_uri=mlflow_uri)
    cb = MonitorCallback(output_key="z", output_key_pos="z_pos", every_n_steps=3, warn=False)
    fit(tmp_path, [cb], logger=ml)
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [ml.run_id]
    history = client.get_metric_history(ml.run_id, "spherewatch/alignment")
    assert sorted(m.step for m in history) == [1, 3, 6]
    assert "train_loss" in runs[0].data.metrics


def test_early_stopping_and_checkpointing_can_monitor_a_spherewatch_key(tmp_path):
    key = "spherewatch/effective_rank"
    early = EarlyStopping(monitor=key, mode="max", stopping_threshold=0.5)  # any rank > 0.5: stop at first check
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=key, mode="max")
    cb = MonitorCallback(module_path="encoder", every_n_steps=2, warn=False)
    trainer = fit(tmp_path, [cb, early, best], max_epochs=3, enable_checkpointing=True)
    assert early.stopped_epoch == 0 and trainer.global_step == 6
    assert float(trainer.callback_metrics[key]) == pytest.approx(cb.monitor.last_values[key])
    assert best.best_model_score is not None and best.best_model_path


def test_stop_rule_stops_the_fit_at_the_first_evaluation_without_any_logger(tmp_path):
    cb = MonitorCallback(module_path="encoder", every_n_steps=5, rules=[STOP_ON_ANYTHING], warn=False)
    trainer = fit(tmp_path, [cb], max_epochs=5)
    assert trainer.global_step == 1
    assert [(a.rule, a.action, a.step) for a in cb.monitor.alerts] == [("mean_cosine_threshold", "stop", 1)]
    assert (tmp_path / "spherewatch" / "spherewatch.jsonl").is_file()  # no logger: JSONL under default_root_dir


def test_validation_passes_never_enter_the_training_tap(tmp_path):
    mem = MemorySink()
    hooked = MonitorCallback(module_path="encoder", every_n_steps=1, val_tap="val_embeddings", sinks=[mem],
                             warn=False)
    keyed = MonitorCallback(output_key="z", labels_key="y", tap="out", val_tap="val_out", every_n_steps=1,
                            metrics=("mean_cosine", "nc1"), num_classes=2, sinks=[MemorySink()], warn=False)
    fit(tmp_path, [hooked, keyed], val=loader(32, constant=True), max_epochs=2, num_sanity_val_steps=2)
    train = mem.history("spherewatch/mean_cosine")
    assert [s for s, _ in train] == list(range(1, 13)) and max(v for _, v in train) < 0.9
    val = mem.history("spherewatch/val_embeddings/mean_cosine")  # constant rows: mean cosine 1
    assert [s for s, _ in val] == [6, 12] and all(v == pytest.approx(1.0, abs=1e-4) for _, v in val)
    assert hooked.monitor.captures["val_embeddings"] == 2  # one epoch-sized batch per validation epoch
    keyed_mem = keyed.monitor.sinks[-1]
    assert [s for s, _ in keyed_mem.history("spherewatch/val_out/mean_cosine")] == [6, 12]
    assert keyed_mem.history("spherewatch/out/mean_cosine")[0][1] < 0.9
    assert {"spherewatch/out/nc1", "spherewatch/val_out/nc1"} <= set(keyed_mem.keys())  # labels were passed on


def test_gradient_accumulation_steps_once_per_optimizer_step_and_other_loggers_get_scalars(tmp_path):
    csv_logger = CSVLogger(tmp_path, name="csv")
    cb = MonitorCallback(module_path="encoder", every_n_steps=1, warn=False)
    trainer = fit(tmp_path, [cb], logger=csv_logger, accumulate_grad_batches=2)
    assert trainer.global_step == 3 and cb.monitor.captures["embeddings"] == 3
    with open(os.path.join(csv_logger.log_dir, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("spherewatch/uniformity")]
    assert sorted(int(r["step"]) for r in rows) == [1, 2, 3]


def test_resume_from_checkpoint_restores_the_same_monitor_state(tmp_path, assert_same_state):
    def callbacks():
        return [
            MonitorCallback(output_key="z", output_key_pos="z_pos", every_n_steps=4, rules=[LOG_ONCE], warn=False),
            MonitorCallback(module_path="encoder", tap="encoder", every_n_steps=3, warn=False),
        ]

    first = callbacks()
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    fit(tmp_path, [*first, saver], max_epochs=2, enable_checkpointing=True)
    ckpt = str(tmp_path / "ckpt" / "epoch=0-step=6.ckpt")
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    assert {first[0].state_key, first[1].state_key} <= set(saved)
    assert first[0].state_key != first[1].state_key and "embeddings" in first[0].state_key

    resumed = callbacks()
    fit(tmp_path / "resumed", resumed, max_epochs=2, ckpt_path=ckpt)
    for a, b in zip(first, resumed):
        assert_same_state(a.state_dict(), b.state_dict())
    assert [(x.rule, x.step) for x in resumed[0].monitor.alerts] == [("mean_cosine_threshold", 1)]  # not re-fired


def test_unknown_module_path_fails_at_fit_start_with_close_matches(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'encoder'"):
        fit(tmp_path, [MonitorCallback(module_path="encodr", warn=False)])


def test_pytorch_lightning_package_is_supported(tmp_path):
    import pytorch_lightning as ptl

    from spherewatch.integrations.pytorch_lightning import MonitorCallback as PTLMonitorCallback

    class PTLTiny(ptl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(8, 12)

        def training_step(self, batch, batch_idx):
            z = self.encoder(batch[0])
            return z.pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    tb = ptl.loggers.TensorBoardLogger(tmp_path, name="ptl")
    cb = PTLMonitorCallback(module_path="encoder", every_n_steps=3, warn=False)
    assert isinstance(cb, ptl.Callback)
    trainer = ptl.Trainer(max_epochs=1, callbacks=[cb], logger=tb, default_root_dir=tmp_path, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(PTLTiny(), loader())
    assert [e.step for e in scalar_tags(tb.log_dir).Scalars("spherewatch/effective_rank")] == [1, 3, 6]


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al. 2021): the cross-correlation of the batch-standardised views toward identity;
    named like lightly's, which is how the callback recognises the loss family."""

    def __init__(self, lambd: float = 0.1) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, z1, z2):
        n1 = (z1 - z1.mean(0)) / (z1.std(0) + 1e-5)
        n2 = (z2 - z2.mean(0)) / (z2.std(0) + 1e-5)
        c = n1.T @ n2 / len(z1)
        on = (1 - torch.diagonal(c)).pow(2).sum()
        return on + self.lambd * (c - torch.diag(torch.diagonal(c))).pow(2).sum()


class TinyBarlow(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.criterion = BarlowTwinsLoss()

    def training_step(self, batch, batch_idx):
        x, _ = batch
        z1, z2 = self.encoder(x + 0.1 * torch.randn_like(x)), self.encoder(x + 0.1 * torch.randn_like(x))
        return {"loss": self.criterion(z1, z2), "z": z1.detach(), "z_pos": z2.detach()}


def test_the_loss_family_is_inferred_from_the_modules_loss_and_a_given_one_wins(tmp_path, caplog):
    import json
    import logging

    mem = MemorySink()
    cb = MonitorCallback(output_key="z", output_key_pos="z_pos", every_n_steps=2, sinks=[mem], warn=False)
    with caplog.at_level(logging.INFO, logger="spherewatch.integrations"):
        fit(tmp_path, [cb], module=TinyBarlow())
    assert cb.inferred_loss_family == ("redundancy_reduction", "BarlowTwinsLoss")
    assert cb.monitor.config.loss_family == "redundancy_reduction"
    assert "loss_family='redundancy_reduction', from the BarlowTwinsLoss" in caplog.text
    # the rules that ran are the family's: the spread warnings take the first sample as a reference
    from spherewatch.keys import config_params

    settings = json.loads(config_params(cb.monitor.config)["spherewatch.rule.uniformity_degradation"])
    assert settings["skip_first"] == 0 and mem.scalars
    given = MonitorCallback(output_key="z", every_n_steps=2, sinks=("memory",), warn=False, loss_family="contrastive")
    fit(tmp_path / "given", [given], module=TinyBarlow())
    assert given.inferred_loss_family is None and given.monitor.config.loss_family == "contrastive"
    plain = MonitorCallback(module_path="encoder", every_n_steps=2, sinks=("memory",), warn=False)
    fit(tmp_path / "plain", [plain])  # an MSE regression: no loss family
    assert plain.inferred_loss_family is None and plain.monitor.config.loss_family is None


class TinyChanging(Tiny):
    """At step 4 the recipe changes (inputs in one corner from there): the module tells the callback it holds."""

    def __init__(self, callback) -> None:
        super().__init__()
        self.callback = callback

    def training_step(self, batch, batch_idx):
        if self.global_step == 3:  # the 4th optimizer step is the first under the new recipe
            self.callback.mark_change("inputs moved")
        if self.global_step >= 3:
            batch = (0.01 * batch[0] + 5.0, batch[1])
        return super().training_step(batch, batch_idx)


def test_a_recipe_change_marked_through_the_callback_is_one_information_event(tmp_path, caplog):
    import logging

    cb = MonitorCallback(module_path="encoder", every_n_steps=2, sinks=("memory",), warn=False)
    with caplog.at_level(logging.WARNING, logger="spherewatch.integrations"):
        cb.mark_change("before fit")  # outside a run: a warning, nothing else
    assert "outside a training run: nothing to mark" in caplog.text
    fit(tmp_path, [cb], module=TinyChanging(cb), max_epochs=2)
    fired = [(a.rule, a.kind, a.step) for a in cb.monitor.alerts if a.status == "fired"]
    # marked at step 4, settled over two intervals (4 steps): reported at the first evaluation from step 8
    assert fired[0] == ("marked_change", "regime_change", 8), fired
    assert "the recipe changed at step 4 (inputs moved)" in cb.monitor.alerts[0].message
    assert all(a.kind != "collapse" or a.step > 8 for a in cb.monitor.alerts)
