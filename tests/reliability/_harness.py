"""A tiny, real, deterministic contrastive training loop for the reliability tests.

An ``nn.Sequential`` encoder trained with SGD on an InfoNCE loss over two noisy views of generated data; after the
forward pass the two views' embeddings go to ``monitor.observe(z1, z2)``, after the optimizer step
``monitor.step(step)`` is called and timed. The data of step ``s`` depends only on ``(seed, s)``, so two runs with
the same seed see the same batches and, on CPU, produce the same metric values.

Used in-process by the tests (``from reliability._harness import TinyTrainer``) and by ``_fsize_worker.py``.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

D_IN = 16
D_OUT = 8

Embeddings = Callable[[int, torch.Tensor, torch.Tensor], Tuple[Any, Any]]


def evaluation_steps(steps: Iterable[int], every: int) -> List[int]:
    """The steps of ``steps`` the Monitor evaluates with ``every_n_steps=every`` and ``sample_first_step=False``."""
    return [s for s in steps if s % every == 0]


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """SimCLR-style loss: each row of ``z1`` must pick its own view in ``z2`` among the batch."""
    logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / tau
    return F.cross_entropy(logits, torch.arange(z1.shape[0]))


@dataclasses.dataclass
class TinyTrainer:
    """A small encoder, its optimizer, and what happened in the steps run so far.

    Attributes:
        fired: every alert ``monitor.step`` returned, in order.
        step_seconds: how long each ``monitor.step`` call took.
        steps_done: the steps completed (training finished = all of them are here).
    """

    seed: int = 0
    batch: int = 32
    lr: float = 0.05
    fired: List[Any] = dataclasses.field(default_factory=list)
    step_seconds: List[float] = dataclasses.field(default_factory=list)
    steps_done: List[int] = dataclasses.field(default_factory=list)
    losses: List[float] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        with torch.random.fork_rng(devices=[]):  # the user's global RNG is left alone
            torch.manual_seed(self.seed)
            self.encoder = nn.Sequential(nn.Linear(D_IN, 32), nn.ReLU(), nn.Linear(32, D_OUT))
        self.opt = torch.optim.SGD(self.encoder.parameters(), lr=self.lr)

    def views(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views of step ``step``'s batch (a function of ``(seed, step)`` only)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        x = torch.randn(self.batch, D_IN, generator=g)
        return x + 0.1 * torch.randn(x.shape, generator=g), x + 0.1 * torch.randn(x.shape, generator=g)

    def run(
        self,
        monitor: Any,
        steps: Iterable[int],
        *,
        embeddings: Optional[Embeddings] = None,
        before_step: Optional[Callable[[int], None]] = None,
    ) -> "TinyTrainer":
        """Train for ``steps``, handing embeddings to ``monitor`` and stepping it after each optimizer step.

        Args:
            monitor: a ``spherewatch.Monitor`` (anything with ``observe`` and ``step``).
            steps: the global steps to run.
            embeddings: ``f(step, z1, z2) -> (z1', z2')``: what the monitor is shown instead of the trained-on
                embeddings (to inject bad batches). The loss always uses the real ``z1, z2``.
            before_step: ``f(step)`` called before each step (to inject a fault at a given step).
        """
        for s in steps:
            if before_step is not None:
                before_step(s)
            x1, x2 = self.views(s)
            z1, z2 = self.encoder(x1), self.encoder(x2)
            seen = (z1, z2) if embeddings is None else embeddings(s, z1, z2)
            monitor.observe(*seen)
            loss = info_nce(z1, z2)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            started = time.perf_counter()
            self.fired.extend(monitor.step(s))
            self.step_seconds.append(time.perf_counter() - started)
            self.steps_done.append(s)
            self.losses.append(float(loss.detach()))
        return self


def fault_records(records: Iterable[Any], part: str) -> List[Any]:
    """The ``logging`` records in which the Monitor reported that ``part`` failed."""
    return [r for r in records
            if r.name == "spherewatch" and r.levelno >= logging.ERROR and f"{part} failed" in r.getMessage()]


def fault_alerts(alerts: Iterable[Any], part: Optional[str] = None) -> List[Any]:
    """The ``monitor_fault`` alerts (of ``part``, when given) among ``alerts``."""
    return [a for a in alerts if a.rule == "monitor_fault" and (part is None or a.key.endswith(f"/monitor/{part}"))]


def assert_reported_once(records: Iterable[Any], alerts: Iterable[Any], part: str) -> Tuple[Any, Any]:
    """Exactly one log record and exactly one ``monitor_fault`` alert say that ``part`` failed; returns both."""
    logged = fault_records(records, part)
    assert len(logged) == 1, f"expected one log record for {part!r}, got {[r.getMessage() for r in logged]}"
    alerted = fault_alerts(alerts, part)
    assert len(alerted) == 1, f"expected one monitor_fault alert for {part!r}, got {alerted}"
    assert alerted[0].severity == "warning" and "Training continues" in alerted[0].message
    return logged[0], alerted[0]


def scalar_steps(history: Iterable[Tuple[int, Any]]) -> List[int]:
    """The steps of a ``[(step, value), ...]`` history, in order."""
    return [s for s, _ in history]
