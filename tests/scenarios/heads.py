"""Assignment-head scenarios (issue 18) on scikit-learn's digits: DINO and SwAV, healthy and collapsing.

DINO is ``examples/dino.py`` (student / EMA teacher, centring, sharpening with a teacher-temperature warm-up,
prototypes frozen for the first 50 steps). SwAV (Caron et al. 2020) is written here from the paper: an encoder, a
projection to the unit sphere, ``K`` prototypes (L2-normalised after every step, frozen for the first 50 steps),
codes of each view computed by Sinkhorn-Knopp (3 iterations, epsilon 0.03: the equipartition constraint; 64 prototypes) and the
swapped prediction loss at temperature 0.1.

Every collapsing scenario is its healthy twin (same seed, same batches) with one thing switched at ``switch``
(default step 200 of 400): DINO's centring removed (one prototype takes everything), DINO's teacher temperature
raised far above the student's (1.0: uniform output), SwAV's Sinkhorn removed (codes = the softmax of the scores at
epsilon: one prototype).

**The onset is measured without the monitor**, on a fixed probe: every ``probe_every`` steps the whole digits set
(1797 images, no augmentation: not the monitor's sampled rows, nor its code) goes through the teacher (SwAV: the
network's prototype scores) and three numbers are read: the **hard-assignment perplexity** ``exp H(histogram of
argmax prototypes)``, the **usage perplexity** ``exp H(mean assignment)`` and the **mean normalised entropy of the
teacher's assignment** (with the loss's centre and temperature; SwAV: of the codes the loss uses). The same probe
runs on the healthy twin. The collapse is *real* at the first probe at or after the switch where either perplexity
has fallen below half the twin's at the same step (one prototype), or the entropy has covered half the distance
from the twin's to 1 (uniform output).

Used by ``tests/scenarios/test_heads.py`` (two short runs) and ``benchmarks/heads.py`` (the detection table).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import sys
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from scenarios.families import sinkhorn

__all__ = ["HEAD_SCENARIOS", "HeadScenario", "HeadRun", "dino_module", "run_head_scenario", "onset"]

_EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "dino.py"


def dino_module():
    """``examples/dino.py`` as a module (the example is the scenario's DINO)."""
    mod = sys.modules.get("spherewatch_example_dino")
    if mod is None:
        spec = importlib.util.spec_from_file_location("spherewatch_example_dino", _EXAMPLE)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["spherewatch_example_dino"] = mod
        spec.loader.exec_module(mod)
    return mod


@dataclasses.dataclass(frozen=True)
class HeadScenario:
    method: str  # dino | swav
    collapses: bool
    change: Dict[str, object] = dataclasses.field(default_factory=dict)  # applied at the switch step
    mode: str = ""  # "uniform" | "one_prototype" for collapsing scenarios
    what: str = ""


HEAD_SCENARIOS: Dict[str, HeadScenario] = {
    "dino": HeadScenario("dino", False, what="healthy DINO (centring, teacher temperature 0.02 -> 0.04 warm-up, "
                                             "prototypes frozen for 50 steps)"),
    "dino_no_centering": HeadScenario("dino", True, {"centering": False}, "one_prototype", "DINO, centring removed"),
    "dino_hot_teacher": HeadScenario("dino", True, {"teacher_temp": 1.0, "warmup_temp": 1.0}, "uniform",
                                     "DINO, teacher temperature 0.04 -> 1.0"),
    "swav": HeadScenario("swav", False, what="healthy SwAV (Sinkhorn 3 iterations, epsilon 0.03, prototypes frozen "
                                             "for 50 steps)"),
    "swav_no_sinkhorn": HeadScenario("swav", True, {"sinkhorn": False}, "one_prototype",
                                     "SwAV, Sinkhorn removed (codes = softmax(scores / epsilon))"),
}


# --------------------------------------------------------------------------------------------------- SwAV
class SwAV(nn.Module):
    def __init__(self, k: int = 64, dim: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 64))
        self.projector = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, dim))
        self.prototypes = nn.Linear(dim, k, bias=False)
        self.settings = dict(sinkhorn=True, eps=0.03, temp=0.1)
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def scores(self, x: torch.Tensor):
        h = self.backbone(x)
        return h, self.prototypes(F.normalize(self.projector(h), dim=1))

    @torch.no_grad()
    def codes(self, scores: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return sinkhorn(scores, s["eps"]) if s["sinkhorn"] else F.softmax(scores / s["eps"], dim=1)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor):
        h1, s1 = self.scores(x1)
        _, s2 = self.scores(x2)
        q1, q2 = self.codes(s1.detach()), self.codes(s2.detach())
        t = self.settings["temp"]
        loss = -(q1 * F.log_softmax(s2 / t, dim=1)).sum(1).mean() - (q2 * F.log_softmax(s1 / t, dim=1)).sum(1).mean()
        return loss / 2, h1, torch.cat([q1, q2]), torch.cat([s2, s1])


# ---------------------------------------------------------------------------------------------------- probe
class HeadProbe:
    """Hard-assignment perplexity and mean normalised teacher entropy on all 1797 digits (no augmentation)."""

    def __init__(self) -> None:
        self.x = dino_module().digits()[0]
        self.history: List[tuple] = []  # (step, hard perplexity, teacher entropy, usage perplexity)

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> None:
        if isinstance(model, SwAV):
            was = model.training
            model.eval()
            _, scores = model.scores(self.x)
            model.train(was)
            p = model.codes(scores)
        else:
            was = model.teacher.training
            model.teacher.eval()
            _, logits = model.teacher(self.x)
            model.teacher.train(was)
            scores = logits
            c = model.center if model.settings["centering"] else torch.zeros_like(model.center)
            p = F.softmax((logits - c) / model.teacher_temp(), dim=1)
        k = scores.shape[1]
        counts = torch.bincount(scores.argmax(dim=1) if isinstance(model, SwAV) else p.argmax(dim=1), minlength=k)
        h = counts.float() / counts.sum()
        perplexity = math.exp(float(-(h[h > 0] * h[h > 0].log()).sum()))
        ent = float(-torch.special.xlogy(p, p).sum(dim=1).mean()) / math.log(k)
        mean = p.mean(dim=0)
        soft = math.exp(float(-torch.special.xlogy(mean, mean).sum()))
        self.history.append((step, perplexity, ent, soft))


def onset(run: List[tuple], twin: List[tuple], switch: int, mode: str) -> Optional[int]:
    """The first probe step at or after ``switch`` where the run has collapsed against its healthy twin."""
    ref = {h[0]: h[1:] for h in twin}
    for s, pp, e, soft in run:
        if s < switch or s not in ref:
            continue
        pp0, e0, soft0 = ref[s]
        if mode == "one_prototype" and (pp < 0.5 * pp0 or soft < 0.5 * soft0):
            return s
        if mode == "uniform" and e > e0 + 0.5 * (1 - e0):
            return s
    return None


# ------------------------------------------------------------------------------------------------------ runs
@dataclasses.dataclass
class HeadRun:
    name: str
    seed: int
    switch: Optional[int]
    onset: Optional[int]
    probe: List[tuple]
    twin_probe: List[tuple]
    losses: List[float]


def _train(name: str, monitor, *, seed: int, steps: int, switch: int, probe_every: int, batch: int,
           collapse: bool) -> tuple:
    sc = HEAD_SCENARIOS[name]
    dino = dino_module()
    probe = HeadProbe()
    torch.manual_seed(seed)
    change = sc.change if (collapse and sc.collapses) else None

    def on_step(step: int, model) -> None:
        if step % probe_every == 0 or step == 1:
            probe(model, step)

    if sc.method == "dino":
        model = dino.DINO(256, steps=steps)
        losses = dino.train(model, monitor, steps=steps, batch=batch, seed=seed, on_step=on_step,
                            switch=switch if change else None, change=change)
        return losses, probe.history
    model = SwAV()
    x, _ = dino.digits()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-5)
    losses: List[float] = []
    for step in range(1, steps + 1):
        if change and step == switch:
            model.settings.update(change)
        xb = x[torch.randint(0, len(x), (batch,), generator=g)]
        loss, h1, codes, student = model.loss(dino.augment(xb, g), dino.augment(xb, g))
        if monitor is not None:
            monitor.observe(h1, tap="backbone")
            # SwAV's "teacher" is the codes, its student the scores at the loss's temperature: both as probabilities
            monitor.observe_head(codes, F.softmax(student.detach() / model.settings["temp"], dim=1), probs=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step <= 50:  # SwAV freezes the prototypes for the first epoch
            model.prototypes.weight.grad = None
        opt.step()
        model.normalize_prototypes()
        if monitor is not None:
            monitor.step(step)
        losses.append(float(loss.detach()))
        on_step(step, model)
    return losses, probe.history


def run_head_scenario(name: str, monitor, *, seed: int = 0, steps: int = 400, switch: int = 200,
                      probe_every: int = 25, batch: int = 128) -> HeadRun:
    """Train scenario ``name`` with ``monitor`` (two taps: ``backbone`` and ``head``) and, for a collapsing one, its
    healthy twin without a monitor (the onset's reference)."""
    sc = HEAD_SCENARIOS[name]
    losses, hist = _train(name, monitor, seed=seed, steps=steps, switch=switch, probe_every=probe_every, batch=batch,
                          collapse=True)
    if not sc.collapses:
        return HeadRun(name, seed, None, None, hist, [], losses)
    _, twin = _train(name, None, seed=seed, steps=steps, switch=switch, probe_every=probe_every, batch=batch,
                     collapse=False)
    return HeadRun(name, seed, switch, onset(hist, twin, switch, sc.mode), hist, twin, losses)
