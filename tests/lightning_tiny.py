"""The tiny LightningModule and data the Lightning tests fit (CPU, seconds)."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12))
        self.head = nn.Linear(12, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        z = self.encoder(x)
        loss = F.mse_loss(self.head(z).squeeze(-1), y)
        self.log("train_loss", loss)
        return {"loss": loss, "z": z.detach(), "z_pos": self.encoder(x + 0.1).detach(), "y": (y > 0).long()}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"z": self.encoder(x), "y": (y > 0).long()}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(n: int = 96, constant: bool = False) -> DataLoader:
    """``n // 16`` batches of 16 (6 optimizer steps per epoch by default); ``constant``: identical rows."""
    x = torch.ones(n, 8) if constant else torch.randn(n, 8, generator=torch.Generator().manual_seed(1))
    return DataLoader(TensorDataset(x, x.sum(1)), batch_size=16)
