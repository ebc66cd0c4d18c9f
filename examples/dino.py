"""spherewatch on DINO (Caron et al. 2021), plain PyTorch, on scikit-learn's digits: two taps, the backbone's
embeddings and the assignment head.

DINO, as in the paper (Algorithm 1): a student and a teacher of the same architecture (backbone + projection head
ending in K prototypes, a weight-normalised last layer), the teacher an exponential moving average (EMA) of the
student; the teacher's output is *centred* (a running mean ``c`` subtracted) and *sharpened* (the teacher's temperature warming
up, here 0.02 -> 0.04; the student's 0.1), and the student learns the teacher's assignment of the other view (cross-entropy).
The last layer (the prototypes) is frozen for the first steps. Remove the centring and one prototype takes
everything; raise the teacher's temperature far above the student's and the output turns uniform -- the two
collapses of the paper, which the embeddings barely show and the head metrics do.

    python examples/dino.py                          # 600 steps, TensorBoard logs in runs/dino
    python examples/dino.py --no-centering           # one-prototype collapse: alerts on spherewatch/head/...
    python examples/dino.py --teacher-temp 1.0       # uniform-output collapse
    tensorboard --logdir runs
"""
from __future__ import annotations

import argparse
import copy
import math
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

import spherewatch as sw

__all__ = ["DINO", "augment", "digits", "main", "train"]


def digits():
    """``(x, y)``: the 1797 digits of scikit-learn as ``(N, 64)`` floats in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random one-pixel shift, pixel dropout, intensity scaling and noise on ``(B, 64)`` images."""
    b = x.shape[0]
    pad = F.pad(x.view(b, 1, 8, 8), (1, 1, 1, 1))
    dx, dy = torch.randint(0, 3, (2,), generator=g).tolist()
    img = pad[:, :, dy:dy + 8, dx:dx + 8]
    keep = (torch.rand(b, 1, 8, 8, generator=g) > 0.2).float()
    scale = 0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=g)
    return (img * keep * scale + 0.1 * torch.randn(b, 1, 8, 8, generator=g)).reshape(b, 64)


class Prototypes(nn.Module):
    """DINO's last layer: ``normalize(z) @ normalize(W)^T``, a weight-normalised linear layer with its norm fixed
    at 1 (``norm_last_layer=True``): the cosine of each sample with each of the K prototypes."""

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, dim) / math.sqrt(dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1) @ F.normalize(self.weight, dim=1).T


class Net(nn.Module):
    """Backbone (the embeddings) + projection head (MLP, L2-normalised bottleneck, K prototypes)."""

    def __init__(self, k: int = 256, dim: int = 64, bottleneck: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, dim))
        # the paper's head with batch norm (DINO's `use_bn_in_head`, its choice for convolutional backbones)
        self.mlp = nn.Sequential(nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.GELU(), nn.Linear(256, bottleneck))
        self.prototypes = Prototypes(bottleneck, k)

    def forward(self, x: torch.Tensor):
        h = self.backbone(x)
        return h, self.prototypes(self.mlp(h))


class DINO(nn.Module):
    """Student, EMA teacher, centre; ``loss(x1, x2)`` is DINO's cross-entropy between the views.

    Args:
        k: prototypes. momentum: the teacher's EMA momentum (cosine schedule to 1 over ``steps``).
        student_temp, teacher_temp: temperatures; the teacher's warms up linearly from ``warmup_temp`` over
            ``warmup_steps``. center_momentum: of the centre; ``centering=False`` removes it.
    """

    def __init__(self, k: int = 256, *, momentum: float = 0.996, student_temp: float = 0.1,
                 teacher_temp: float = 0.04, warmup_temp: float = 0.02, warmup_steps: int = 150,
                 center_momentum: float = 0.9, centering: bool = True, freeze_prototypes_steps: int = 50,
                 steps: int = 600) -> None:
        super().__init__()
        self.student = Net(k)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(k))
        self.settings = dict(momentum=momentum, student_temp=student_temp, teacher_temp=teacher_temp,
                             warmup_temp=warmup_temp, warmup_steps=warmup_steps, center_momentum=center_momentum,
                             centering=centering, freeze_prototypes_steps=freeze_prototypes_steps, steps=steps)
        self.step_count = 0

    def teacher_temp(self) -> float:
        """The teacher's temperature now (linear warm-up, as in the paper)."""
        s = self.settings
        if self.step_count >= s["warmup_steps"]:
            return s["teacher_temp"]
        return s["warmup_temp"] + (s["teacher_temp"] - s["warmup_temp"]) * self.step_count / s["warmup_steps"]

    def loss(self, x1: torch.Tensor, x2: torch.Tensor):
        """``(loss, student embeddings of view 1, teacher logits (2B, K), student logits (2B, K))``; the teacher's
        rows are paired with the student's of the *other* view (what the loss compares)."""
        h1, s1 = self.student(x1)
        _, s2 = self.student(x2)
        with torch.no_grad():
            _, t1 = self.teacher(x1)
            _, t2 = self.teacher(x2)
        ts = self.settings["student_temp"]
        tt = self.teacher_temp()
        c = self.center if self.settings["centering"] else torch.zeros_like(self.center)
        q1, q2 = F.softmax((t1 - c) / tt, dim=1), F.softmax((t2 - c) / tt, dim=1)
        loss = -(q1 * F.log_softmax(s2 / ts, dim=1)).sum(1).mean() - (q2 * F.log_softmax(s1 / ts, dim=1)).sum(1).mean()
        teacher, student = torch.cat([t1, t2]), torch.cat([s2, s1])
        return loss / 2, h1, teacher, student

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """After the optimizer step: the centre's and the teacher's EMA."""
        s = self.settings
        m = s["center_momentum"]
        self.center.mul_(m).add_(teacher_logits.mean(0), alpha=1 - m)
        mom = 1 - (1 - s["momentum"]) * (math.cos(math.pi * self.step_count / s["steps"]) + 1) / 2
        for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
            pt.mul_(mom).add_(ps.detach(), alpha=1 - mom)
        self.step_count += 1


def train(model: DINO, monitor: Optional[sw.Monitor], *, steps: int = 600, batch: int = 128, seed: int = 0,
          lr: float = 2e-3, on_step: Optional[Callable[[int, DINO], None]] = None,
          switch: Optional[int] = None, change: Optional[Dict[str, object]] = None) -> List[float]:
    """Train ``model`` on the digits with the monitor's two taps; at step ``switch`` the ``change`` (settings of
    :class:`DINO`) is applied. Returns the losses."""
    x, _ = digits()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.student.parameters(), lr=lr, weight_decay=0.04)
    freeze = model.settings["freeze_prototypes_steps"]
    losses: List[float] = []
    for step in range(1, steps + 1):
        if switch is not None and step == switch:
            model.settings.update(change or {})
        xb = x[torch.randint(0, len(x), (batch,), generator=g)]
        loss, h1, teacher, student = model.loss(augment(xb, g), augment(xb, g))
        if monitor is not None:
            # --- spherewatch: tap 1, the backbone's embeddings; tap 2, the head (teacher centred and sharpened
            # exactly as the loss sees it, and the student it is compared with)
            monitor.observe(h1, tap="backbone")
            monitor.observe_head(teacher, student, teacher_temp=model.teacher_temp(),
                                 student_temp=model.settings["student_temp"],
                                 center=model.center if model.settings["centering"] else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step <= freeze:  # the prototypes stay fixed for the first steps (the paper: the first epoch)
            model.student.prototypes.weight.grad = None
        torch.nn.utils.clip_grad_norm_(model.student.parameters(), 3.0)
        opt.step()
        model.update(teacher)
        if monitor is not None:
            for alert in monitor.step(step):
                print(f"step {step}: [{alert.severity}] {alert.message}")
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, model)
    return losses


def main(argv=None) -> sw.Monitor:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--prototypes", type=int, default=256)
    parser.add_argument("--no-centering", action="store_true", help="remove the centring (one-prototype collapse)")
    parser.add_argument("--teacher-temp", type=float, default=0.04, help="e.g. 1.0: uniform-output collapse")
    parser.add_argument("--every", type=int, default=25, help="evaluate every N steps")
    parser.add_argument("--log-dir", default="runs/dino")
    parser.add_argument("--sinks", default="tensorboard")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = DINO(args.prototypes, centering=not args.no_centering, teacher_temp=args.teacher_temp,
                 warmup_temp=min(0.02, args.teacher_temp), steps=args.steps)
    mon = sw.Monitor(every_n_steps=args.every, sinks=tuple(args.sinks.split(",")), log_dir=args.log_dir,
                     loss_family="self_distillation")
    # (instead of observe_head: `mon.watch(model.teacher.prototypes, kind="head", temperature=model.teacher_temp)`
    # takes the teacher's raw logits at the current temperature, without the centre)
    train(model, mon, steps=args.steps)
    mon.close()
    for key, value in sorted(mon.last_values.items()):
        print(f"{key} = {value:.4f}")
    return mon


if __name__ == "__main__":
    main()
