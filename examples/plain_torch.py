"""spherewatch in a plain PyTorch loop: a SimCLR-style encoder on generated data.

    python examples/plain_torch.py                 # 300 steps, TensorBoard logs in runs/plain_torch
    python examples/plain_torch.py --steps 20      # a quick check
    tensorboard --logdir runs
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import spherewatch as sw


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits, target = a @ b.T / tau, torch.arange(a.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def main(argv=None) -> sw.Monitor:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-dir", default="runs/plain_torch")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    protos = torch.randn(16, 32) * 2                        # generated data: points around 16 prototypes
    data = protos[torch.randint(0, 16, (4096,))] + torch.randn(4096, 32)
    model = nn.Sequential(nn.Linear(32, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    # --- spherewatch: build the monitor, then observe() after the forward pass and step() after the optimizer
    mon = sw.Monitor(every_n_steps=20, sinks=("tensorboard",), log_dir=args.log_dir)
    for step in range(args.steps):
        x = data[torch.randint(0, len(data), (256,))]
        z1, z2 = model(x + 0.5 * torch.randn_like(x)), model(x + 0.5 * torch.randn_like(x))  # two views
        mon.observe(z1, z2)                                  # a flag check, except on sampling steps
        loss = info_nce(z1, z2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(step)  # evaluates on sampling steps; each alert comes once, as a CollapseWarning (and is returned)
    mon.close()
    # --- (or, instead of observe: `spherewatch.integrations.torch.watch_path(mon, model, "3")` before the loop)

    for key, value in sorted(mon.last_values.items()):
        print(f"{key} = {value:.4f}")
    return mon


if __name__ == "__main__":
    main()
