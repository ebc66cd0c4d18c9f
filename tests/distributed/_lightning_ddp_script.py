"""Run by test_lightning_ddp.py: a 2-process Lightning DDP fit on CPU (gloo) with uneven per-rank batches.

Writes, into OUT: rows_<rank>.pt (rows each rank returned at every step), values_<rank>.json (the monitor's
last values, rank 0 only has sinks), final_<rank>.json (global_step and should_stop at the end).
"""
import json
import os
import sys

import lightning.pytorch as pl
import torch
from torch import nn

from spherewatch.integrations.lightning import MonitorCallback

OUT = sys.argv[1]
STOP_AT = int(sys.argv[2])


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(8, 6)
        self.rows = {}

    def training_step(self, batch, batch_idx):
        (x,) = batch
        n = 5 if self.global_rank == 0 else 9  # uneven per-rank batch sizes
        z = self.encoder(x[:n])
        if self.global_step >= STOP_AT:  # collapse from STOP_AT on: every row the same
            z = z * 0 + 1.0  # keeps the graph: DDP needs a gradient for every parameter
        self.rows[int(self.global_step) + 1] = z.detach().clone()
        return {"loss": z.pow(2).mean(), "z": z.detach()}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main():
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(400, 8))
    loader = torch.utils.data.DataLoader(data, batch_size=10)
    rule = {"kind": "threshold", "metric": "mean_cosine", "above": 0.99, "action": "stop"}
    cb = MonitorCallback(output_key="z", every_n_steps=2, sinks=("memory",), rules=[rule], warn=False,
                         preset="standard")
    model = Model()
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=30, callbacks=[cb], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=OUT)
    trainer.fit(model, loader)
    rank = trainer.global_rank
    torch.save(model.rows, os.path.join(OUT, f"rows_{rank}.pt"))
    mem = [s for s in cb.monitor.sinks if getattr(s, "name", "") == "memory"]
    history = {k: mem[0].history(k) for k in mem[0].keys()} if mem else {}
    with open(os.path.join(OUT, f"final_{rank}.json"), "w") as f:
        json.dump({"global_step": trainer.global_step, "should_stop": cb.monitor.should_stop,
                   "alerts": [(a.rule, a.step) for a in cb.monitor.alerts], "history": history}, f)


if __name__ == "__main__":
    main()
