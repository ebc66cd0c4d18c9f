"""Self-supervised image scenarios on scikit-learn's bundled digits (8x8 images), written from the papers.

Methods: SimCLR (Chen et al. 2020, NT-Xent), SimSiam (Chen & He 2021: predictor + stop-gradient), BYOL (Grill et
al. 2020: predictor + momentum target), VICReg (Bardes et al. 2022: invariance + variance + covariance). Every
collapsing scenario is a healthy run in which one thing is switched at ``switch`` (default: step 200 of 400) — the
stop-gradient or the predictor removed, the momentum target dropped, the variance term removed, a narrow
projector swapped in, weight decay far above what the augmentation holds, the learning rate blown up, the
temperature far off — so the onset is known and the part before it is a healthy run of the same model.

The onset is measured without the monitor, on a fixed probe: every ``probe_every`` steps the whole digits set
(no augmentation, not the monitor's sampled rows) is embedded and three things are computed from the normalised
embeddings: (a) 5-NN accuracy of 400 held-out digits against the rest, (b) the participation ratio
``(sum lambda)^2 / sum lambda^2`` of their covariance (how many directions carry the spread) and (c) their total
variance ``1 - ||mean||^2`` (how much spread there is at all). The collapse is *real* at the first probe after the
switch where the kNN accuracy has lost a third of its pre-switch margin over chance, or the participation ratio
or the total variance has fallen below 0.7 of its pre-switch value (means of the last three probes before it).

Used by ``tests/scenarios/test_ssl_digits.py`` (a few short runs) and ``benchmarks/scenarios.py`` (the table).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SCENARIOS", "Scenario", "ScenarioRun", "digits", "make_method", "run_plain", "run_lightning"]


@dataclasses.dataclass(frozen=True)
class Scenario:
    method: str  # simclr | simsiam | byol | vicreg
    collapses: bool
    change: Dict[str, object] = dataclasses.field(default_factory=dict)  # applied at the switch step
    base: Dict[str, object] = dataclasses.field(default_factory=dict)  # settings from the start
    what: str = ""


SCENARIOS: Dict[str, Scenario] = {
    "simclr": Scenario("simclr", False, what="healthy SimCLR (NT-Xent, tau=0.2)"),
    "simsiam": Scenario("simsiam", False, what="healthy SimSiam (predictor + stop-gradient)"),
    "byol": Scenario("byol", False, what="healthy BYOL (predictor + momentum 0.99 target)"),
    "vicreg": Scenario("vicreg", False, what="healthy VICReg (invariance 5, variance 25, covariance 1)"),
    "simsiam_no_stopgrad": Scenario("simsiam", True, {"stopgrad": False}, what="SimSiam, stop-gradient removed"),
    "simsiam_no_predictor": Scenario("simsiam", True, {"predictor": False}, what="SimSiam, predictor removed"),
    "byol_no_predictor": Scenario("byol", True, {"predictor": False}, what="BYOL, predictor removed"),
    "byol_no_momentum_no_stopgrad": Scenario(
        "byol", True, {"momentum": 0.0, "stopgrad": False}, what="BYOL, target = online net with gradients"),
    "vicreg_no_variance": Scenario("vicreg", True, {"var_weight": 0.0}, what="VICReg, variance term removed"),
    "simclr_narrow_projector": Scenario("simclr", True, {"narrow": 2}, what="SimCLR, projector narrowed to 2"),
    "simsiam_weight_decay": Scenario("simsiam", True, {"weight_decay": 0.5}, what="SimSiam, weight decay 0.5"),
    "simclr_lr_blowup": Scenario("simclr", True, {"lr_scale": 300.0}, what="SimCLR, learning rate x300"),
    "simclr_temperature_low": Scenario("simclr", True, {"tau": 0.01}, what="SimCLR, temperature 0.2 -> 0.01"),
    # induced, but the probe sees no collapse within 200 steps at tau=20 (the gradients shrink like 1/tau): it counts
    # as a negative, on which the monitor must stay silent
    "simclr_temperature_high": Scenario("simclr", True, {"tau": 20.0}, what="SimCLR, temperature 0.2 -> 20"),
}


# ----------------------------------------------------------------------------------------------------- data
_DIGITS: Optional[tuple] = None


def digits():
    """``(x, y)``: the 1797 digits as ``(N, 64)`` floats in [0, 1] and their labels (loaded once)."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        _DIGITS = (torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target))
    return _DIGITS


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shift by up to one pixel, pixel dropout, intensity scaling and noise on ``(B, 64)`` images."""
    b = x.shape[0]
    img = x.view(b, 1, 8, 8)
    pad = F.pad(img, (1, 1, 1, 1))
    dx, dy = torch.randint(0, 3, (2,), generator=g).tolist()
    img = pad[:, :, dy:dy + 8, dx:dx + 8]
    keep = (torch.rand(b, 1, 8, 8, generator=g) > 0.2).float()
    scale = 0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=g)
    noise = 0.1 * torch.randn(b, 1, 8, 8, generator=g)
    return (img * keep * scale + noise).reshape(b, 64)


# --------------------------------------------------------------------------------------------------- models
HIDDEN = 64
def _mlp(dims: List[int], last_bn: bool = False) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU()]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=False))
    return nn.Sequential(*layers)


class SSLMethod(nn.Module):
    """Encoder + projector (+ predictor, + momentum target); ``forward(x1, x2) -> (loss, z1, z2)``.

    ``z1, z2`` are the projector outputs of the two views: the embeddings the monitor watches.
    """

    def __init__(self, method: str, *, dim: int = 32, tau: float = 0.2) -> None:
        super().__init__()
        self.method = method
        self.encoder = _mlp([64, 128, HIDDEN])
        self.projector = _mlp([HIDDEN, HIDDEN, dim])
        self.predictor = _mlp([dim, dim // 2, dim]) if method in ("simsiam", "byol") else None
        self.settings = {"stopgrad": True, "predictor": True, "momentum": 0.99, "var_weight": 25.0, "tau": tau}
        self.target: Optional[nn.Module] = None
        if method == "byol":
            self.target = copy.deepcopy(nn.Sequential(self.encoder, self.projector))
            for p in self.target.parameters():
                p.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))

    def narrow(self, width: int) -> None:
        """Swap in a projector with a ``width``-wide bottleneck (dimensional collapse by construction)."""
        dim = self.projector[-1].out_features
        self.projector = nn.Sequential(nn.Linear(HIDDEN, width), nn.ReLU(), nn.Linear(width, dim))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        s = self.settings
        z1, z2 = self.embed(x1), self.embed(x2)
        if self.method == "simclr":
            loss = nt_xent(z1, z2, float(s["tau"]))
        elif self.method == "vicreg":
            loss = vicreg(z1, z2, var_weight=float(s["var_weight"]))
        else:
            pred = self.predictor if s["predictor"] else nn.Identity()
            p1, p2 = pred(z1), pred(z2)
            if self.method == "simsiam":
                t1, t2 = z1, z2
            elif s["stopgrad"] is False and float(s["momentum"]) == 0.0:
                t1, t2 = z1, z2  # "target" = the online network itself, gradients flowing
            else:
                with torch.no_grad():
                    t1, t2 = self.target(x1), self.target(x2)
            if s["stopgrad"]:
                t1, t2 = t1.detach(), t2.detach()
            loss = 0.5 * (neg_cos(p1, t2) + neg_cos(p2, t1))
        return loss, z1, z2

    @torch.no_grad()
    def after_step(self) -> None:
        if self.target is not None and not (self.settings["stopgrad"] is False and self.settings["momentum"] == 0.0):
            m = float(self.settings["momentum"])
            online = nn.Sequential(self.encoder, self.projector)
            for pt, po in zip(self.target.parameters(), online.parameters()):
                if pt.shape == po.shape:
                    pt.mul_(m).add_(po.detach(), alpha=1 - m)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's normalized-temperature cross entropy over the 2B views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / tau
    n = z1.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def neg_cos(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return -F.cosine_similarity(p, z, dim=1).mean()


def vicreg(z1: torch.Tensor, z2: torch.Tensor, *, var_weight: float = 25.0, inv_weight: float = 5.0,
           cov_weight: float = 1.0) -> torch.Tensor:
    """VICReg: ``inv * MSE(z1, z2) + var * sum_views mean_d relu(1 - std_d) / 2 + cov * off-diagonal cov^2 / D``.

    The paper's invariance weight is 25; on these strongly augmented 8x8 images 25 pulls the embeddings onto a few
    directions (effective rank 6 of 32, kNN accuracy 0.63), 5 trains a healthy encoder (rank 19, kNN 0.88).
    """
    inv = F.mse_loss(z1, z2)
    var = 0.0
    cov = 0.0
    for z in (z1, z2):
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        var = var + F.relu(1 - std).mean() / 2
        c = z - z.mean(0)
        covm = (c.T @ c) / (z.shape[0] - 1)
        off = covm - torch.diag(torch.diag(covm))
        cov = cov + off.pow(2).sum() / z.shape[1] / 2
    return inv_weight * inv + var_weight * var + cov_weight * cov


def make_method(name: str, seed: int) -> SSLMethod:
    sc = SCENARIOS[name]
    torch.manual_seed(seed)
    return SSLMethod(sc.method, **{k: v for k, v in sc.base.items() if k in ("dim", "tau")})


# ---------------------------------------------------------------------------------------------------- probe
class Probe:
    """Fixed, monitor-independent collapse measure: 5-NN accuracy and participation ratio on all digits."""

    def __init__(self, seed: int = 0) -> None:
        x, y = digits()
        g = torch.Generator().manual_seed(1000 + seed)
        perm = torch.randperm(len(x), generator=g)
        self.x, self.y = x, y
        self.query, self.ref = perm[:400], perm[400:]
        self.history: List[tuple] = []  # (step, knn, participation ratio)

    @torch.no_grad()
    def __call__(self, model: SSLMethod, step: int) -> None:
        was = model.training
        model.eval()
        z = self.prepare(model.embed(self.x))
        model.train(was)
        if not torch.isfinite(z).all():
            self.history.append((step, 0.1, 1.0, 0.0))
            return
        zn = F.normalize(z, dim=1)
        self.history.append((step, self.knn(zn), *self.moments(zn)))

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        """The embeddings as the probe measures them (a subclass may change the dtype)."""
        return z

    def moments(self, zn: torch.Tensor) -> Tuple[float, float]:
        """``(participation ratio, total variance)`` of the normalised embeddings' covariance."""
        c = zn - zn.mean(0)
        lam = torch.linalg.eigvalsh((c.T @ c) / len(c)).clamp(min=0)
        return (lam.sum() ** 2 / (lam.pow(2).sum() + 1e-30)).item(), lam.sum().item()

    def knn(self, zn: torch.Tensor) -> float:
        """5-NN accuracy of the query digits among the reference digits, on normalised embeddings ``zn``."""
        idx = (zn[self.query] @ zn[self.ref].T).topk(5, dim=1).indices
        pred = torch.mode(self.y[self.ref][idx], dim=1).values
        return (pred == self.y[self.query]).float().mean().item()

    def onset(self, switch: int) -> Optional[int]:
        before = [h for h in self.history if h[0] < switch][-3:]
        if not before:
            return None
        k0, p0, v0 = (sum(h[i] for h in before) / len(before) for i in (1, 2, 3))
        for s, k, p, v in self.history:
            if s >= switch and (k < k0 - (k0 - 0.1) / 3 or p < 0.7 * p0 or v < 0.7 * v0):
                return s
        return None


# ------------------------------------------------------------------------------------------------------ runs
@dataclasses.dataclass
class ScenarioRun:
    name: str
    seed: int
    switch: Optional[int]
    onset: Optional[int]
    probe: List[tuple]  # (step, knn accuracy, participation ratio, total variance)
    losses: List[float]


def _apply(model: SSLMethod, opt: torch.optim.Optimizer, change: Dict[str, object], base_lr: float) -> None:
    for k, v in change.items():
        if k == "narrow":
            model.narrow(int(v))
            opt.add_param_group({"params": list(model.projector.parameters())})
        elif k == "weight_decay":
            for gr in opt.param_groups:
                gr["weight_decay"] = float(v)
        elif k == "lr_scale":
            for gr in opt.param_groups:
                gr["lr"] = base_lr * float(v)
        else:
            model.settings[k] = v


LR = {"simclr": 0.05, "simsiam": 0.05, "byol": 0.05, "vicreg": 0.02}
BATCH = 128


def make_optimizer(model: SSLMethod) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR[model.method], momentum=0.9,
                           weight_decay=1e-4)


def run_plain(name: str, monitor, *, seed: int = 0, steps: int = 400, switch: int = 200, probe_every: int = 10,
              on_step: Optional[Callable[[int], None]] = None) -> ScenarioRun:
    """Train scenario ``name`` in a plain PyTorch loop with ``monitor.observe(z1, z2)`` / ``monitor.step(step)``."""
    sc = SCENARIOS[name]
    x, _ = digits()
    model = make_method(name, seed)
    opt = make_optimizer(model)
    g = torch.Generator().manual_seed(seed)
    probe = Probe(seed)
    losses: List[float] = []
    for step in range(1, steps + 1):
        if sc.collapses and step == switch:
            _apply(model, opt, sc.change, LR[model.method])
        idx = torch.randint(0, len(x), (BATCH,), generator=g)
        xb = x[idx]
        loss, z1, z2 = model(augment(xb, g), augment(xb, g))
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
            opt.step()
        model.after_step()
        monitor.observe(z1, z2)
        monitor.step(step)
        losses.append(float(loss.detach()) if torch.isfinite(loss) else math.nan)
        if step % probe_every == 0 or step == 1:
            probe(model, step)
        if on_step is not None:
            on_step(step)
    return ScenarioRun(name, seed, switch if sc.collapses else None, probe.onset(switch) if sc.collapses else None,
                       probe.history, losses)


def run_lightning(name: str, callback, *, seed: int = 0, steps: int = 400, switch: int = 200,
                  probe_every: int = 10, root: str = ".") -> ScenarioRun:
    """The same scenario under Lightning's real ``Trainer`` (CPU), the monitor as a ``MonitorCallback`` reading
    ``z`` / ``z_pos`` from what ``training_step`` returns."""
    import lightning.pytorch as pl

    sc = SCENARIOS[name]
    x, _ = digits()
    probe = Probe(seed)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_method(name, seed)
            self.g = torch.Generator().manual_seed(seed)

        def training_step(self, batch, batch_idx):
            step = self.global_step + 1
            if sc.collapses and step == switch:
                _apply(self.net, self.optimizers().optimizer, sc.change, LR[self.net.method])
            xb = batch[0]
            loss, z1, z2 = self.net(augment(xb, self.g), augment(xb, self.g))
            return {"loss": loss, "z": z1.detach(), "z_pos": z2.detach()}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.net.after_step()
            step = self.global_step
            if step % probe_every == 0 or step == 1:
                probe(self.net, step)

        def configure_optimizers(self):
            return make_optimizer(self.net)

    gen = torch.Generator().manual_seed(seed)
    ds = torch.utils.data.TensorDataset(x)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=steps * BATCH, generator=gen)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, sampler=sampler, drop_last=True)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         default_root_dir=root)
    module = Module()
    trainer.fit(module, loader)
    return ScenarioRun(name, seed, switch if sc.collapses else None, probe.onset(switch) if sc.collapses else None,
                       probe.history, [])
