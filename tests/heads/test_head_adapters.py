"""The adapters take an assignment head's logits (issue 18): Lightning from training_step's returned dict (real
Trainer on CPU), HF from a head module of the model (real transformers.Trainer, a tiny BertConfig model)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from spherewatch.integrations.lightning import MonitorCallback  # noqa: E402
from spherewatch.metrics.head import head_stats, head_values  # noqa: E402


class TinyDINO(pl.LightningModule):
    """A student/teacher pair over 16 prototypes; training_step returns the embeddings and both heads' logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12))
        self.prototypes = nn.Linear(12, 16, bias=False)
        self.seen = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        z = self.encoder(x)
        s = self.prototypes(z)
        with torch.no_grad():
            t = self.prototypes(self.encoder(x + 0.05))
        temp = 0.04 + 0.001 * self.global_step
        loss = -(F.softmax(t / temp, dim=1) * F.log_softmax(s / 0.1, dim=1)).sum(1).mean()
        self.seen.append((self.global_step, t.detach(), s.detach(), temp))
        return {"loss": loss, "z": z.detach(), "t": t, "s": s.detach(), "temp": temp}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_lightning_callback_takes_the_head_from_the_step_outputs(tmp_path):
    cb = MonitorCallback(output_key="z", head={"teacher": "t", "student": "s", "teacher_temp": "temp",
                                               "student_temp": 0.1}, every_n_steps=3, sinks=("memory",), warn=False)
    module = TinyDINO()
    x = torch.randn(96, 8, generator=torch.Generator().manual_seed(1))
    trainer = pl.Trainer(accelerator="cpu", devices=1, callbacks=[cb], logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, max_epochs=1,
                         enable_checkpointing=False)
    trainer.fit(module, DataLoader(TensorDataset(x), batch_size=16))
    values = cb.monitor.last_values
    step = cb.monitor.last_evaluation_step
    _, t, s, temp = next(v for v in module.seen if v[0] == step - 1)  # the batch of the evaluated optimizer step
    ref = head_values(head_stats(t, s, teacher_temp=temp, student_temp=0.1))
    for k, v in ref.items():
        assert values[f"spherewatch/head/{k}"] == pytest.approx(float(v), rel=1e-5), k
    assert "spherewatch/uniformity" in values


def test_lightning_head_spec_is_checked():
    with pytest.raises(ValueError, match="teacher"):
        MonitorCallback(output_key="z", head={"student": "s"})
    with pytest.raises(ValueError, match="unknown"):
        MonitorCallback(output_key="z", head={"teacher": "t", "temperature": 0.1})
    MonitorCallback(head={"teacher": "t"})  # the head alone


def test_hf_callback_watches_a_head_module(tmp_path):
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from spherewatch.integrations.hf import MonitorTrainerCallback

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            self.ids = torch.randint(1, 100, (64, 12), generator=torch.Generator().manual_seed(0))

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                    "labels": (self.ids[i, 1] >= 50).long()}

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=4))
    cb = MonitorTrainerCallback(module_path="bert.pooler", head_path="classifier", head_temperature=0.5,
                                every_n_steps=2, sinks=("memory",), warn=False)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=8, max_steps=4,
                             save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb]).train()
    values = cb.monitor.last_values
    assert {"spherewatch/head/teacher_entropy", "spherewatch/head/prototypes_in_use",
            "spherewatch/uniformity"} <= set(values)
    assert 0 < values["spherewatch/head/teacher_entropy"] <= 1
    assert cb.state()["args"]["head_path"] == "classifier"
