"""spherewatch in a Lightning fit: SimCLR on generated data, logged through the run's TensorBoardLogger.

    python examples/lightning_simclr.py                    # 300 steps, logs in runs/lightning_simclr
    python examples/lightning_simclr.py --max-steps 20     # a quick check
    tensorboard --logdir runs/lightning_simclr
"""
from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from spherewatch.integrations.lightning import MonitorCallback


class SimCLR(pl.LightningModule):
    def __init__(self, in_dim: int = 32, dim: int = 64, tau: float = 0.2) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, dim))
        self.tau = tau

    def training_step(self, batch, batch_idx):
        (x,) = batch
        z1 = self.encoder(x + 0.5 * torch.randn_like(x))
        z2 = self.encoder(x + 0.5 * torch.randn_like(x))
        a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        logits, target = a @ b.T / self.tau, torch.arange(len(x), device=x.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        self.log("train/loss", loss)
        return {"loss": loss, "z": z1.detach(), "z_pos": z2.detach()}  # the views spherewatch reads

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main(argv=None) -> MonitorCallback:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--root", default="runs/lightning_simclr")
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    protos = torch.randn(16, 32) * 2                        # generated data: points around 16 prototypes
    data = protos[torch.randint(0, 16, (4096,))] + torch.randn(4096, 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=256, shuffle=True)

    # --- spherewatch: one callback; metrics go to the trainer's TensorBoard run, alerts to the log
    monitor = MonitorCallback(output_key="z", output_key_pos="z_pos", every_n_steps=20)
    trainer = pl.Trainer(max_steps=args.max_steps, callbacks=[monitor], logger=TensorBoardLogger(args.root),
                         default_root_dir=args.root, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(SimCLR(), loader)

    for key, value in sorted(monitor.monitor.last_values.items()):
        print(f"{key} = {value:.4f}")
    return monitor


if __name__ == "__main__":
    main()
