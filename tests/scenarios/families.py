"""Model families and training regimes beyond ``digits_ssl.py``, on scikit-learn's digits, written from the papers.

Families (plain PyTorch; encoder MLP 64-128-64 with BatchNorm, projector MLP 64-64-D; the monitor watches the
projector output ``z`` of the two views, ``observe(z1, z2)``):

* ``simclr``, ``simsiam``, ``byol``, ``vicreg``: :class:`digits_ssl.SSLMethod` (NT-Xent; predictor + stop-gradient;
  predictor + momentum target; invariance + variance + covariance), at any width D.
* ``dino`` (Caron et al. 2021): student and EMA teacher (momentum 0.99 -> 1, cosine), head = projector (a
  D-wide bottleneck), l2-normalisation and a weight-normalised layer (norm fixed to 1) to K = 64 prototypes;
  teacher outputs centred (centre = EMA 0.9 of the teacher's batch means) and sharpened (teacher temperature
  warmed up linearly 0.01 -> 0.02 over the first 30% of the steps, student 0.1); cross-entropy between the
  views. The paper's 0.04 -> 0.07 (for K = 65,536) left this small model in the uniform collapse the paper
  describes (loss = log K from the start); 0.01 -> 0.02 at K = 64 trains.
* ``barlow`` (Zbontar et al. 2021): cross-correlation of the batch-standardised projector outputs of the two
  views; ``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2`` with ``lambda = 3.2 / D`` (the paper's 5e-3 is for
  D = 8192 and batch 2048; at D = 32 and batch 128, lambda 0.1 and learning rate 0.01 train best: kNN 0.83 against
  0.75-0.80 for 1/D or 5e-3); divided by D.
* ``moco`` (MoCo v2, Chen et al. 2020): query encoder, momentum key encoder (0.99), a queue of 1024 normalised
  keys as negatives (enqueued after the backward pass), InfoNCE at temperature 0.2, symmetrised.
* ``swav`` (Caron et al. 2020): normalised projector output scored against K = 64 normalised prototypes; codes
  by Sinkhorn-Knopp (epsilon 0.03, 3 iterations) on the detached scores of the batch; swapped prediction at
  temperature 0.1; prototypes frozen during the first epoch (14 steps of 128 of the 1797 digits).
* ``supervised``: a classifier (encoder, projector to the D-wide penultimate layer, ReLU, linear to 10 classes)
  trained with cross-entropy on both augmented views; the penultimate layer is watched.

DINO and SwAV are watched (and probed) at the BACKBONE (the 64-wide encoder output: what their users evaluate):
their head output lives in the cone of the prototypes by construction (mean cosine ~0.9 in healthy runs here,
kNN of the backbone 0.94), and their classic bugs (no centring, no Sinkhorn) collapse the head to a trivial
solution (loss log-K or 0) while the backbone simply stops learning -- the probe sees no collapse there, so
those two runs are NEGATIVES. Backbone collapses of these families come from weight decay 0.5 or a learning
rate x300 switched on at step 200.

Scenarios (:data:`SCENARIOS`): a family, a regime and optionally a BUG switched on at ``switch`` (0: from the
first step). Regimes: ``constant`` learning rate (400 steps); ``warmup_cosine`` (linear warm-up over 10% of the
steps, cosine decay to 0), ``step_decay`` (x0.1 at 50% and 75%), ``restarts`` (cosine with warm restarts every
500 steps, 50-step warm-up each), ``warmup`` (100-step linear warm-up, then constant) -- the long ones run
2,000 steps; ``aug_x2`` (the augmentation twice as strong from step 300: a deliberate recipe change, healthy);
``batch_change`` (batch 128 -> 256 at step 1,000); ``small_batch`` (batch 32: MoCo's queue of 1,024 random keys is
then replaced by real ones only after 16 steps, and its first-interval transient goes deeper). Bugs: SimSiam without stop-gradient (from step 0 at D = 32,
512, 2048, or from step 200), DINO without centring, Barlow Twins with lambda = 0 (off-diagonal term removed),
MoCo with the queue emptied, the negatives dropped and no momentum (the key encoder is the query encoder,
detached), SwAV without Sinkhorn (codes = softmax of the scores, no equipartition), a classifier fed a constant
label (a loader bug), a slow dimensional collapse (Barlow Twins whose lambda decays linearly 0.1 -> 0 from step
200 to step 2,200 of 2,400: the participation ratio falls from 0.98 to 0.5 of the twin's over 2,000 steps) and a
late collapse after a slow change (VICReg whose variance weight decays linearly 25 -> 0 over the same steps:
healthy until the weight nears 0, then it collapses within 100 steps); for DINO and SwAV also weight decay 0.5 and (DINO) the learning rate x300.

Onset, from an independent probe (not the monitor). Every ``probe_every`` steps (10, or 20 for runs over 1,000
steps) and at step 1, the model in eval mode embeds all 1,797 digits without augmentation; from the
l2-normalised embeddings the probe computes (a) the 5-NN accuracy of 400 held-out digits against the other
1,397 (cosine similarity, majority vote), (b) the participation ratio ``PR = (sum lambda)^2 / sum lambda^2`` of
their covariance and (c) their total variance ``TV = sum lambda = 1 - ||mean||^2``. Each broken run has a
HEALTHY TWIN: the same seed and the same recipe without the bug (identical up to the switch), probed at the same
steps. A probe step ``s`` is *collapsed* when, against the twin at ``s``::

    kNN(s) < kNN_twin(s) - (kNN_twin(s) - 0.1) / 3      (a third of the twin's margin over chance lost), or
    PR(s)  < 0.7 * PR_twin(s),                           or
    TV(s)  < 0.7 * TV_twin(s)

and the ONSET is the first probe step at or after the switch that is collapsed and stays collapsed on the next
two probe steps (all remaining ones near the end). A broken run whose probe never meets this is a negative (the
bug did not collapse the embeddings: the monitor must stay silent). Healthy runs have onset ``None``; the probe
confirms them (``probe_ok``): mean 5-NN accuracy of the last three probes >= 0.7 and, where the healthy run has a
twin (``aug_x2``, ``batch_change``: the same run without the change), no persisting loss of a third of the twin's
kNN margin. Only the kNN is required of a healthy run: a deliberate recipe change legitimately changes the
geometry (after the augmentation doubles at step 300, the clean digits' total variance falls 0.86 -> 0.05 for
SimCLR and 0.78 -> 0.4 for VICReg -- BatchNorm's statistics now describe much noisier inputs -- while their kNN
accuracy holds: 0.80-0.96).

Used by ``benchmarks/scenarios.py`` (the table, the traces) and ``tests/scenarios/test_families.py``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from scenarios.digits_ssl import HIDDEN, Probe, SSLMethod, _mlp, digits

__all__ = ["FAMILIES", "LOSS_FAMILY", "SCENARIOS", "FamilyRun", "FScenario", "FamilyProbe", "build", "onset_vs_twin",
           "run_scenario", "train", "watched_width"]

FAMILIES = ("simclr", "moco", "simsiam", "byol", "barlow", "vicreg", "dino", "swav", "supervised")
#: the loss family of each (``MonitorConfig.loss_family``; the benchmark keeps the default None unless told)
LOSS_FAMILY = {"simclr": "contrastive", "moco": "contrastive", "swav": "clustering", "simsiam": "non_contrastive",
               "byol": "non_contrastive", "barlow": "redundancy_reduction", "vicreg": "redundancy_reduction",
               "dino": "self_distillation", "supervised": "supervised"}
LR = {"simclr": 0.05, "moco": 0.05, "simsiam": 0.05, "byol": 0.05, "vicreg": 0.02, "barlow": 0.01, "dino": 0.05,
      "swav": 0.05, "supervised": 0.05}
BATCH = 128
AUG_X2_FROM = 300  # the ``aug_x2`` regime's first step with the stronger augmentations
SMALL_BATCH = 32  # the ``small_batch`` regime: MoCo's queue of 1,024 keys then takes 16 steps to fill


# ----------------------------------------------------------------------------------------------- augmentation
def augment(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """``digits_ssl.augment`` with a strength: shift up to ``round(strength)`` pixels, pixel dropout ``0.2 s``,
    intensity scale in ``1 +- 0.3 s``, noise ``0.1 s`` (strength 1 is the same recipe)."""
    b = x.shape[0]
    r = max(1, int(round(strength)))
    img = F.pad(x.view(b, 1, 8, 8), (r, r, r, r))
    dx, dy = torch.randint(0, 2 * r + 1, (2,), generator=g).tolist()
    img = img[:, :, dy:dy + 8, dx:dx + 8]
    keep = (torch.rand(b, 1, 8, 8, generator=g) > min(0.2 * strength, 0.8)).float()
    scale = 1 - 0.3 * strength + 0.6 * strength * torch.rand(b, 1, 1, 1, generator=g)
    noise = 0.1 * strength * torch.randn(b, 1, 8, 8, generator=g)
    return (img * keep * scale + noise).reshape(b, 64)


# ------------------------------------------------------------------------------------------------------ models
class Family(nn.Module):
    """Encoder + projector (the watched ``z``) and the family's loss: ``loss(x1, x2, y, t) -> (loss, z1, z2)``
    where ``t`` in [0, 1] is the fraction of training done; ``after_step(t)`` runs the EMA updates."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.encoder = _mlp([64, 128, HIDDEN])
        self.projector = _mlp([HIDDEN, HIDDEN, dim])
        self.settings: Dict[str, Any] = {}
        self.watch = "head"  # "head": the projector output is watched; "backbone": the encoder output

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return h if self.watch == "backbone" else self.projector(h)

    def after_step(self, t: float) -> None:
        pass


class Classic(Family):
    """SimCLR / SimSiam / BYOL / VICReg: ``digits_ssl.SSLMethod`` (its settings switch the same bugs)."""

    def __init__(self, method: str, dim: int) -> None:
        nn.Module.__init__(self)
        self.dim = dim
        self.m = SSLMethod(method, dim=dim)
        self.encoder, self.projector = self.m.encoder, self.m.projector
        self.settings = self.m.settings
        self.watch = "head"

    def loss(self, x1, x2, y, t):
        return self.m(x1, x2)

    def after_step(self, t: float) -> None:
        self.m.after_step()


def _ema(target: nn.Module, online: nn.Module, m: float) -> None:
    with torch.no_grad():
        for pt, po in zip(target.parameters(), online.parameters()):
            pt.mul_(m).add_(po.detach(), alpha=1 - m)
        for bt, bo in zip(target.buffers(), online.buffers()):
            bt.copy_(bo)


class Dino(Family):
    def __init__(self, dim: int, k: int = 64) -> None:
        super().__init__(dim)
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(dim, k, bias=False))
        with torch.no_grad():  # the paper's norm_last_layer: the weight norm g fixed to 1 (logits are cosines)
            self.last.parametrizations.weight.original0.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)
        self.teacher = copy.deepcopy(nn.ModuleList([self.encoder, self.projector, self.last]))
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, k))
        self.watch = "backbone"
        self.settings = {"centering": True, "tau_s": 0.1, "tau_t0": 0.01, "tau_t": 0.02, "warm": 0.3,
                         "momentum": 0.99}

    def _logits(self, x, net):
        h = net[0](x)
        z = net[1](h)
        return (h if self.watch == "backbone" else z), net[2](F.normalize(z, dim=1))

    def loss(self, x1, x2, y, t):
        s = self.settings
        student = nn.ModuleList([self.encoder, self.projector, self.last])
        z1, s1 = self._logits(x1, student)
        z2, s2 = self._logits(x2, student)
        tau_t = s["tau_t0"] + (s["tau_t"] - s["tau_t0"]) * min(1.0, t / s["warm"])
        with torch.no_grad():
            _, t1 = self._logits(x1, self.teacher)
            _, t2 = self._logits(x2, self.teacher)
            c = self.center if s["centering"] else torch.zeros_like(self.center)
            q1, q2 = F.softmax((t1 - c) / tau_t, 1), F.softmax((t2 - c) / tau_t, 1)
            if s["centering"]:
                self.center.mul_(0.9).add_(torch.cat([t1, t2]).mean(0, keepdim=True), alpha=0.1)
        ls1, ls2 = F.log_softmax(s1 / s["tau_s"], 1), F.log_softmax(s2 / s["tau_s"], 1)
        loss = -0.5 * ((q2 * ls1).sum(1).mean() + (q1 * ls2).sum(1).mean())
        return loss, z1, z2

    def after_step(self, t: float) -> None:
        m0 = self.settings["momentum"]
        m = 1 - (1 - m0) * (math.cos(math.pi * t) + 1) / 2
        _ema(self.teacher, nn.ModuleList([self.encoder, self.projector, self.last]), m)


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins' loss (the paper's pseudo-code), named like lightly's: the class name is how the Lightning and HF
    callbacks recognise the loss family (``redundancy_reduction``)."""

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
        n1 = (z1 - z1.mean(0)) / (z1.std(0) + 1e-5)
        n2 = (z2 - z2.mean(0)) / (z2.std(0) + 1e-5)
        c = n1.T @ n2 / z1.shape[0]
        on = (1 - torch.diagonal(c)).pow(2).sum()
        off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
        return (on + lambd * off) / z1.shape[1]


class Barlow(Family):
    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.settings = {"lambda": 3.2 / dim}
        self.criterion = BarlowTwinsLoss()

    def loss(self, x1, x2, y, t):
        z1, z2 = self.embed(x1), self.embed(x2)
        return self.criterion(z1, z2, self.settings["lambda"]), z1, z2


class Moco(Family):
    def __init__(self, dim: int, queue: int = 1024) -> None:
        super().__init__(dim)
        self.key = copy.deepcopy(nn.Sequential(self.encoder, self.projector))
        for p in self.key.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue, dim), dim=1))
        self.ptr = 0
        self.settings = {"tau": 0.2, "momentum": 0.99, "negatives": True}

    def _half(self, q, k):
        if not self.settings["negatives"]:  # what is left of InfoNCE without negatives: alignment only
            return -(q * k).sum(1).mean() / self.settings["tau"]
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ self.queue.T
        logits = torch.cat([pos, neg], 1) / self.settings["tau"]
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))

    def loss(self, x1, x2, y, t):
        z1, z2 = self.embed(x1), self.embed(x2)
        q1, q2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        with torch.no_grad():
            if self.settings["momentum"] > 0:
                k1, k2 = F.normalize(self.key(x1), dim=1), F.normalize(self.key(x2), dim=1)
            else:  # no momentum encoder: the key is the query encoder itself, detached
                k1, k2 = q1.detach(), q2.detach()
        loss = 0.5 * (self._half(q1, k2) + self._half(q2, k1))
        self._keys = torch.cat([k1, k2])[: len(self.queue)] if self.settings["negatives"] else None
        return loss, z1, z2

    def after_step(self, t: float) -> None:
        if getattr(self, "_keys", None) is not None:  # enqueue after the backward pass
            idx = (torch.arange(len(self._keys)) + self.ptr) % len(self.queue)
            self.queue[idx] = self._keys
            self.ptr = int((self.ptr + len(self._keys)) % len(self.queue))
            self._keys = None
        if self.settings["momentum"] > 0:
            with torch.no_grad():
                m = self.settings["momentum"]
                for pk, pq in zip(self.key.parameters(), nn.Sequential(self.encoder, self.projector).parameters()):
                    pk.mul_(m).add_(pq.detach(), alpha=1 - m)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """SwAV's equipartitioned codes for a batch: rows sum to 1, prototypes used equally (Sinkhorn-Knopp)."""
    q = torch.exp((scores - scores.max()) / eps).T  # K x B
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdim=True)
        q /= k
        q /= q.sum(0, keepdim=True)
        q /= b
    return (q * b).T


class Swav(Family):
    def __init__(self, dim: int, k: int = 64) -> None:
        super().__init__(dim)
        self.prototypes = nn.Linear(dim, k, bias=False)
        self.watch = "backbone"
        self.settings = {"tau": 0.1, "eps": 0.03, "sinkhorn": True, "freeze": 14}
        self.steps = 0

    def loss(self, x1, x2, y, t):
        h1, h2 = self.encoder(x1), self.encoder(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        s1, s2 = self.prototypes(F.normalize(z1, dim=1)), self.prototypes(F.normalize(z2, dim=1))
        if self.settings["sinkhorn"]:
            c1, c2 = sinkhorn(s1.detach(), self.settings["eps"]), sinkhorn(s2.detach(), self.settings["eps"])
        else:  # no equipartition: the codes are the scores' own softmax
            c1, c2 = F.softmax(s1.detach() / self.settings["eps"], 1), F.softmax(s2.detach() / self.settings["eps"], 1)
        tau = self.settings["tau"]
        loss = -0.5 * ((c2 * F.log_softmax(s1 / tau, 1)).sum(1).mean() + (c1 * F.log_softmax(s2 / tau, 1)).sum(1).mean())
        self.steps += 1
        return (loss, h1, h2) if self.watch == "backbone" else (loss, z1, z2)


class Supervised(Family):
    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.head = nn.Linear(dim, 10)
        self.settings = {"constant_label": False}

    def loss(self, x1, x2, y, t):
        z1, z2 = self.embed(x1), self.embed(x2)
        if self.settings["constant_label"]:
            y = torch.zeros_like(y)
        loss = 0.5 * (F.cross_entropy(self.head(F.relu(z1)), y) + F.cross_entropy(self.head(F.relu(z2)), y))
        return loss, z1, z2


def build(family: str, dim: int, seed: int) -> Family:
    torch.manual_seed(seed)
    if family in ("simclr", "simsiam", "byol", "vicreg"):
        return Classic(family, dim)
    return {"dino": Dino, "barlow": Barlow, "moco": Moco, "swav": Swav, "supervised": Supervised}[family](dim)


# -------------------------------------------------------------------------------------------------- scenarios
@dataclasses.dataclass(frozen=True)
class FScenario:
    family: str
    regime: str = "constant"  # constant | warmup | warmup_cosine | step_decay | restarts | aug_x2 | batch_change
    #                           | small_batch
    steps: int = 400
    dim: int = 32
    bug: Dict[str, Any] = dataclasses.field(default_factory=dict)  # settings switched at `switch`
    switch: Optional[int] = None  # None: healthy; 0: the bug from the first step
    ramp: Optional[Tuple[str, float, float, int, int]] = None  # (setting, from, to, start, end): a slow bug
    twin: Optional[str] = None  # the healthy twin's scenario name
    what: str = ""

    @property
    def collapses(self) -> bool:  # a bug is switched in (whether the probe sees a collapse decides the label)
        return self.switch is not None or self.ramp is not None


def _scenarios() -> Dict[str, FScenario]:
    s: Dict[str, FScenario] = {}
    for f in FAMILIES:
        s[f] = FScenario(f, what=f"healthy {f}, 400 steps, constant LR")
        s[f"{f}_long_cosine"] = FScenario(f, "warmup_cosine", 2000, what=f"healthy {f}, 2000 steps, warm-up + cosine")
    for f in ("simclr", "byol", "barlow", "dino"):
        s[f"{f}_long_step"] = FScenario(f, "step_decay", 2000, what=f"healthy {f}, 2000 steps, step decay")
        s[f"{f}_long_restarts"] = FScenario(f, "restarts", 2000, what=f"healthy {f}, 2000 steps, warm restarts")
    for f in ("simclr", "byol", "barlow", "dino", "vicreg"):
        s[f"{f}_aug_x2"] = FScenario(f, "aug_x2", 600, twin=f, what=f"healthy {f}, augmentation x2 from step 300")
    s["byol_warmup"] = FScenario("byol", "warmup", 600, what="healthy BYOL, 100-step LR warm-up")
    for f in ("simclr", "moco", "barlow"):
        s[f"{f}_batch_change"] = FScenario(f, "batch_change", 2000, twin=f"{f}_long_cosine",
                                           what=f"healthy {f}, batch 128 -> 256 at step 1000 (cosine LR)")
    for f in ("simclr", "moco", "simsiam"):
        s[f"{f}_small_batch"] = FScenario(f, "small_batch", what=f"healthy {f}, batch 32, constant LR")
    for d in (512, 2048):
        s[f"simsiam_d{d}"] = FScenario("simsiam", dim=d, what=f"healthy SimSiam at D={d}")
    s["simclr_d512"] = FScenario("simclr", dim=512, what="healthy SimCLR at D=512")
    # broken
    s["simsiam_no_stopgrad"] = FScenario("simsiam", bug={"stopgrad": False}, switch=200, twin="simsiam",
                                         what="SimSiam, stop-gradient removed at 200")
    for d in (32, 512, 2048):
        s[f"simsiam_no_stopgrad_step0_d{d}"] = FScenario(
            "simsiam", dim=d, bug={"stopgrad": False}, switch=0, twin="simsiam" if d == 32 else f"simsiam_d{d}",
            what=f"SimSiam without stop-gradient from step 0, D={d}")
    s["byol_no_predictor"] = FScenario("byol", bug={"predictor": False}, switch=200, twin="byol",
                                       what="BYOL, predictor removed at 200")
    s["vicreg_no_variance"] = FScenario("vicreg", bug={"var_weight": 0.0}, switch=200, twin="vicreg",
                                        what="VICReg, variance term removed at 200")
    s["simclr_temperature_low"] = FScenario("simclr", bug={"tau": 0.01}, switch=200, twin="simclr",
                                            what="SimCLR, temperature 0.2 -> 0.01 at 200")
    s["dino_no_centering"] = FScenario("dino", bug={"centering": False}, switch=200, twin="dino",
                                       what="DINO, centring removed at 200")
    s["dino_weight_decay"] = FScenario("dino", bug={"weight_decay": 0.5}, switch=200, twin="dino",
                                       what="DINO, weight decay 0.5 from 200")
    s["dino_lr_blowup"] = FScenario("dino", bug={"lr_scale": 300.0}, switch=200, twin="dino",
                                    what="DINO, learning rate x300 from 200")
    s["swav_weight_decay"] = FScenario("swav", bug={"weight_decay": 0.5}, switch=200, twin="swav",
                                       what="SwAV, weight decay 0.5 from 200")
    s["barlow_lambda0"] = FScenario("barlow", bug={"lambda": 0.0}, switch=200, twin="barlow",
                                    what="Barlow Twins, off-diagonal term removed (lambda 0) at 200")
    s["moco_no_negatives"] = FScenario("moco", bug={"negatives": False, "momentum": 0.0}, switch=200, twin="moco",
                                       what="MoCo, queue emptied / negatives dropped, no momentum encoder, at 200")
    s["swav_no_sinkhorn"] = FScenario("swav", bug={"sinkhorn": False}, switch=200, twin="swav",
                                      what="SwAV, Sinkhorn removed (codes = softmax of the scores) at 200")
    s["supervised_constant_label"] = FScenario("supervised", bug={"constant_label": True}, switch=200,
                                               twin="supervised", what="classifier fed a constant label from 200")
    s["vicreg_slow_collapse"] = FScenario("vicreg", steps=2400, ramp=("var_weight", 25.0, 0.0, 200, 2200),
                                          twin="vicreg_long_constant",
                                          what="VICReg, variance weight 25 -> 0 linearly over steps 200-2200 "
                                               "(healthy until the weight nears 0, then collapses)")
    s["vicreg_long_constant"] = FScenario("vicreg", steps=2400, what="healthy VICReg, 2400 steps, constant LR")
    s["barlow_slow_collapse"] = FScenario("barlow", steps=2400, ramp=("lambda", 0.1, 0.0, 200, 2200),
                                          twin="barlow_long_constant",
                                          what="Barlow Twins, lambda 0.1 -> 0 linearly over steps 200-2200 (PR "
                                               "falls slowly to 0.5x the twin's)")
    s["barlow_long_constant"] = FScenario("barlow", steps=2400, what="healthy Barlow Twins, 2400 steps, constant LR")
    return s


SCENARIOS: Dict[str, FScenario] = _scenarios()


#: The deliberate recipe change of a regime, in the words a user would pass to ``mark_change``.
CHANGE_WHAT = {"aug_x2": "augmentations twice as strong", "batch_change": f"batch {BATCH} -> 256"}


def change_step(sc: FScenario) -> Optional[int]:
    """The first step trained under ``sc``'s deliberate recipe change (``aug_x2``: the stronger augmentations,
    ``batch_change``: the larger batch, from just after the run's middle), or ``None``: no change."""
    if sc.regime == "aug_x2":
        return AUG_X2_FROM
    if sc.regime == "batch_change":
        return sc.steps // 2 + 1
    return None


def lr_mult(regime: str, step: int, steps: int) -> float:
    t = step / steps
    if regime == "warmup_cosine":
        w = 0.1 * steps
        return step / w if step < w else 0.5 * (1 + math.cos(math.pi * (step - w) / (steps - w)))
    if regime in ("batch_change",):
        return lr_mult("warmup_cosine", step, steps)
    if regime == "step_decay":
        return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
    if regime == "restarts":
        p = (step - 1) % 500
        return min(1.0, (p + 1) / 50) * 0.5 * (1 + math.cos(math.pi * p / 500))
    if regime == "warmup":
        return min(1.0, step / 100)
    return 1.0


# ------------------------------------------------------------------------------------------------------ probe
class FamilyProbe(Probe):
    """5-NN accuracy, participation ratio and total variance of all digits' normalised embeddings (see the module
    docstring); ``history``: ``[(step, knn, pr, tv), ...]``. Covariance moments via the smaller Gram matrix, in fp64;
    the digits, their query/reference split and the kNN are :class:`~scenarios.digits_ssl.Probe`'s."""

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        return z.double()

    def moments(self, zn: torch.Tensor) -> Tuple[float, float]:
        c = zn - zn.mean(0)
        n = len(c)
        m = (c.T @ c) if c.shape[1] <= n else (c @ c.T)
        tv = (c.pow(2).sum() / n).item()
        fro2 = (m.pow(2).sum() / n ** 2).item()
        return (tv ** 2 / fro2 if fro2 > 0 else 1.0), tv


def _collapsed(p, t) -> bool:
    _, k, pr, tv = p
    _, kt, prt, tvt = t
    return k < kt - (kt - 0.1) / 3 or pr < 0.7 * prt or tv < 0.7 * tvt


def onset_vs_twin(history, twin, switch: int) -> Optional[int]:
    """The onset (module docstring) of ``history`` against ``twin``'s probe at the same steps; ``None`` if none."""
    tw = {h[0]: h for h in twin}
    pts = [(h, tw[h[0]]) for h in history if h[0] in tw and h[0] >= max(switch, 1)]
    flags = [_collapsed(p, t) for p, t in pts]
    for i, (p, _) in enumerate(pts):
        if all(flags[i:i + 3]):
            return p[0]
    return None


def probe_ok(history, twin=None) -> bool:
    """A healthy run stayed healthy: mean 5-NN accuracy of its last three probes >= 0.7 and, against its twin, no
    persisting loss of a third of the twin's kNN margin (the geometry may change: see the module docstring)."""
    last = history[-3:]
    knn = sum(h[1] for h in last) / len(last)
    if knn < 0.7:
        return False
    if twin is None:
        return True
    tw = {h[0]: h for h in twin}
    pts = [(h, tw[h[0]]) for h in history if h[0] in tw]
    flags = [p[1] < t[1] - (t[1] - 0.1) / 3 for p, t in pts]
    return not any(all(flags[i:i + 3]) for i in range(len(flags)))


# ------------------------------------------------------------------------------------------------------- runs
@dataclasses.dataclass
class FamilyRun:
    name: str
    seed: int
    scenario: FScenario
    probe: List[Tuple[int, float, float, float]]
    losses: List[float]
    onset: Optional[int] = None
    twin_probe: Optional[list] = None
    probe_ok: Optional[bool] = None
    changes: List[list] = dataclasses.field(default_factory=list)  # [step, what] marked on the monitor


def make_optimizer(model: Family, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                           weight_decay=1e-4)


class _Steps:
    """One scenario's training, one optimizer step at a time (shared by :func:`train` and :func:`run_lightning`)."""

    def __init__(self, name: str, seed: int, probe_every: Optional[int] = None) -> None:
        self.sc = sc = SCENARIOS[name]
        self.name, self.seed = name, seed
        self.x, self.y = digits()
        self.model = build(sc.family, sc.dim, seed)
        self.base_lr = LR[sc.family]
        self.opt = make_optimizer(self.model, self.base_lr)
        self.g = torch.Generator().manual_seed(seed)
        self.every = probe_every or (20 if sc.steps > 1000 else 10)
        self.probe = FamilyProbe(seed)
        self.losses: List[float] = []
        self.marked: List[list] = []  # [step, what] of the recipe changes told to the monitor

    def step(self, step: int, opt: Any = None, backward: Callable[[torch.Tensor], None] = torch.Tensor.backward):
        """Optimizer step ``step`` (1-based) through ``opt`` (default: the run's SGD; Lightning passes its wrapper of
        it); returns the loss and the two views' projector outputs."""
        sc, model = self.sc, self.model
        opt = opt or self.opt
        if sc.switch is not None and step == max(sc.switch, 1):
            model.settings.update({k: v for k, v in sc.bug.items() if k not in ("weight_decay", "lr_scale")})
            if "weight_decay" in sc.bug:
                for gr in self.opt.param_groups:
                    gr["weight_decay"] = float(sc.bug["weight_decay"])
            self.base_lr *= float(sc.bug.get("lr_scale", 1.0))
        if sc.ramp is not None:
            key, a, b, s0, s1 = sc.ramp
            if step >= s0:
                value = a + (b - a) * min(1.0, (step - s0) / (s1 - s0))
                if key == "weight_decay":
                    for gr in self.opt.param_groups:
                        gr["weight_decay"] = value
                else:
                    model.settings[key] = value
        for gr in self.opt.param_groups:
            gr["lr"] = self.base_lr * lr_mult(sc.regime, step, sc.steps)
        first = change_step(sc)
        changed = first is not None and step >= first
        batch = 256 if sc.regime == "batch_change" and changed else (
            SMALL_BATCH if sc.regime == "small_batch" else BATCH)
        strength = 2.0 if sc.regime == "aug_x2" and changed else 1.0
        idx = torch.randint(0, len(self.x), (batch,), generator=self.g)
        xb, yb = self.x[idx], self.y[idx]
        loss, z1, z2 = model.loss(augment(xb, self.g, strength), augment(xb, self.g, strength), yb, step / sc.steps)
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            backward(loss)
            if isinstance(model, Swav) and model.steps <= model.settings["freeze"]:
                model.prototypes.weight.grad = None  # prototypes frozen during the first epoch
            opt.step()
        model.after_step(step / sc.steps)
        return loss, z1, z2

    def mark(self, step: int, target: Any) -> None:
        """Tell ``target`` (a Monitor or an adapter's callback) of the deliberate recipe change that starts at
        ``step``, if any (``aug_x2``'s stronger augmentations, ``batch_change``'s larger batch), as a user who makes
        it would (``mark_change``), and keep it in :attr:`marked`."""
        if step == change_step(self.sc):
            what = CHANGE_WHAT[self.sc.regime]
            target.mark_change(what)
            self.marked.append([step, what])

    def after(self, step: int, loss: torch.Tensor) -> None:
        """Record the loss and, on probe steps, the probe."""
        self.losses.append(float(loss.detach()) if torch.isfinite(loss) else math.nan)
        if step % self.every == 0 or step == 1:
            self.probe(self.model, step)

    def run(self) -> FamilyRun:
        return FamilyRun(self.name, self.seed, self.sc, self.probe.history, self.losses, changes=self.marked)


def train(name: str, monitor: Any = None, *, seed: int = 0, probe_every: Optional[int] = None,
          on_step: Optional[Callable[[int], None]] = None) -> FamilyRun:
    """Train scenario ``name``; with ``monitor``: ``monitor.observe(z1, z2)`` and ``monitor.step(step)`` each
    step. Returns the run with its probe history (onset not yet computed: see :func:`run_scenario`)."""
    steps = _Steps(name, seed, probe_every)
    for step in range(1, steps.sc.steps + 1):
        loss, z1, z2 = steps.step(step)
        if monitor is not None:
            steps.mark(step, monitor)
            monitor.observe(z1, z2)
            monitor.step(step)
        steps.after(step, loss)
        if on_step is not None:
            on_step(step)
    return steps.run()


def run_lightning(name: str, callback: Any, *, seed: int = 0, root: str = ".") -> FamilyRun:
    """Scenario ``name`` under Lightning's real ``Trainer`` (CPU, manual optimisation through the same steps as
    :func:`train`), the monitor a ``MonitorCallback`` reading ``z`` / ``z_pos`` from what ``training_step`` returns:
    the callback sees the family's loss module (``BarlowTwinsLoss``...) and infers the loss family from it. The onset
    is measured against the healthy twin, as in :func:`run_scenario`."""
    import lightning.pytorch as pl

    steps = _Steps(name, seed)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.model = steps.model

        def training_step(self, batch, batch_idx):
            step = self.global_step + 1
            loss, z1, z2 = steps.step(step, self.optimizers(), self.manual_backward)
            steps.mark(step, callback)
            steps.after(step, loss)
            return {"loss": loss.detach(), "z": z1.detach(), "z_pos": z2.detach()}

        def configure_optimizers(self):
            return steps.opt

    n = steps.sc.steps
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(n, 1)), batch_size=1)
    trainer = pl.Trainer(max_steps=n, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         default_root_dir=root)
    trainer.fit(Module(), loader)  # the loader only counts the steps: each step samples its own batch of digits
    run = steps.run()
    _finish(run)
    return run


_TWINS: Dict[Tuple[str, int], list] = {}


def twin_probe(name: str, seed: int) -> list:
    """The probe history of healthy scenario ``name`` at ``seed`` (trained without a monitor; cached)."""
    key = (name, seed)
    if key not in _TWINS:
        _TWINS[key] = train(name, None, seed=seed).probe
    return _TWINS[key]


def remember_twin(run: FamilyRun) -> None:
    """Cache a healthy run's probe so broken runs of the same seed use it as their twin without retraining."""
    _TWINS[(run.name, run.seed)] = run.probe


def run_scenario(name: str, monitor: Any = None, *, seed: int = 0, twin: bool = True) -> FamilyRun:
    """Train ``name`` and measure its onset against its healthy twin (``onset`` None for healthy runs)."""
    run = train(name, monitor, seed=seed)
    _finish(run, twin)
    return run


def _finish(run: FamilyRun, twin: bool = True) -> None:
    """Measure the onset against the healthy twin (broken runs) or check the probe (healthy runs)."""
    sc = run.scenario
    if not sc.collapses:
        remember_twin(run)
    if twin and sc.twin is not None:
        run.twin_probe = twin_probe(sc.twin, run.seed)
    if sc.collapses:
        start = sc.switch if sc.switch is not None else sc.ramp[3]  # type: ignore[index]
        run.onset = onset_vs_twin(run.probe, run.twin_probe, start) if run.twin_probe is not None else None
    else:
        run.probe_ok = probe_ok(run.probe, run.twin_probe)


def watched_width(sc: FScenario) -> int:
    """Width of the embedding the monitor watches: the projector's D, or the backbone's for DINO and SwAV."""
    return HIDDEN if sc.family in ("dino", "swav") else sc.dim
