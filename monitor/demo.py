"""Small self-supervised training runs on generated data, healthy and collapsing, used by ``spherewatch demo``
and by the scenario tests. Pure torch, CPU-friendly (a few seconds per run).

Scenarios (``SCENARIOS``):
- ``simsiam``: SimSiam (predictor + stop-gradient), healthy.
- ``simsiam_no_stopgrad``: the same without stop-gradient: collapses within a few dozen steps (Chen & He 2021).
- ``simsiam_high_wd``: SimSiam whose weight decay overwhelms the augmentation: the regime in which
  non-contrastive learning collapses (Tian, Chen & Ganguli 2021).
- ``simclr``: InfoNCE (SimCLR), healthy.
- ``simclr_high_lr``: InfoNCE broken by a far too high learning rate from ``break_step`` on.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SCENARIOS", "ScenarioResult", "make_data", "Encoder", "run_scenario"]


@dataclasses.dataclass
class Scenario:
    loss: str  # "simsiam" or "infonce"
    stop_gradient: bool = True
    lr: float = 0.05
    weight_decay: float = 1e-4
    break_step: Optional[int] = None  # from this step on, lr *= break_lr_factor
    break_lr_factor: float = 1.0
    collapses: bool = False


SCENARIOS: Dict[str, Scenario] = {
    "simsiam": Scenario("simsiam"),
    "simsiam_no_stopgrad": Scenario("simsiam", stop_gradient=False, collapses=True),
    "simsiam_high_wd": Scenario("simsiam", weight_decay=0.02, collapses=True),
    "simclr": Scenario("infonce"),
    "simclr_high_lr": Scenario("infonce", break_step=100, break_lr_factor=500.0, collapses=True),
}


def make_data(n: int = 4096, in_dim: int = 32, classes: int = 16, seed: int = 0) -> torch.Tensor:
    """Points around ``classes`` random prototypes in ``R^in_dim`` (a stand-in for an image dataset)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, in_dim, generator=g) * 2.0
    labels = torch.randint(0, classes, (n,), generator=g)
    return protos[labels] + torch.randn(n, in_dim, generator=g)


def augment(x: torch.Tensor, g: torch.Generator, noise: float = 0.5, drop: float = 0.2) -> torch.Tensor:
    mask = (torch.rand(x.shape, generator=g) > drop).to(x.dtype)
    scale = 1.0 + 0.2 * torch.randn(x.shape[0], 1, generator=g)
    return (x * mask * scale + noise * torch.randn(x.shape, generator=g)) / (1.0 - drop)


class Encoder(nn.Module):
    """Backbone + projector (``encoder``) and a SimSiam predictor."""

    def __init__(self, in_dim: int = 32, hidden: int = 128, dim: int = 64) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.projector = nn.Sequential(nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.predictor = nn.Sequential(nn.Linear(dim, dim // 2), nn.BatchNorm1d(dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def _loss(kind: Scenario, model: Encoder, z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    if kind.loss == "simsiam":
        p1, p2 = model.predictor(z1), model.predictor(z2)
        t1, t2 = (z1.detach(), z2.detach()) if kind.stop_gradient else (z1, z2)
        return -(F.cosine_similarity(p1, t2).mean() + F.cosine_similarity(p2, t1).mean()) / 2
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = a @ b.T / tau
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@dataclasses.dataclass
class ScenarioResult:
    name: str
    steps: int
    losses: List[float]
    alerts: list
    onset: Optional[int]  # first step of the ground-truth collapse (dense probe), None if it never collapsed


def run_scenario(
    name: str,
    monitor=None,
    *,
    steps: int = 400,
    batch_size: int = 256,
    seed: int = 0,
    probe_every: int = 5,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> ScenarioResult:
    """Train one scenario for ``steps`` optimizer steps, feeding ``monitor`` (``observe`` + ``step``) if given.

    ``onset`` is measured independently of the monitor: every ``probe_every`` steps, the effective rank and
    the uniformity of a fixed probe batch (eval mode, 1024 rows) are computed; collapse sets in at the first
    probe where the rank falls below half of its best so far, or the uniformity loses half of its best spread,
    or the embeddings stop being finite.
    """
    from spherewatch.metrics import effective_rank, uniformity

    kind = SCENARIOS[name]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    data = make_data(seed=seed)
    probe = make_data(n=1024, seed=seed + 1000)
    model = Encoder()
    opt = torch.optim.SGD(model.parameters(), lr=kind.lr, momentum=0.9, weight_decay=kind.weight_decay)
    losses: List[float] = []
    alerts: list = []
    best_rank, best_unif, onset = 0.0, 0.0, None
    for step in range(1, steps + 1):
        if kind.break_step is not None and step == kind.break_step:
            for group in opt.param_groups:
                group["lr"] = kind.lr * kind.break_lr_factor
        model.train()
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=g)
        x = data[idx]
        z1, z2 = model(augment(x, g)), model(augment(x, g))
        if monitor is not None:
            monitor.observe(z1, z2)
        loss = _loss(kind, model, z1, z2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if monitor is not None:
            alerts.extend(monitor.step(step))
        if on_step is not None:
            on_step(step, losses[-1])
        if onset is None and step % probe_every == 0:
            model.eval()
            with torch.no_grad():
                zp = model(probe)
            model.train()
            if not torch.isfinite(zp).all():
                onset = step
                continue
            r, u = float(effective_rank(zp)), float(uniformity(zp))
            best_rank, best_unif = max(best_rank, r), min(best_unif, u)
            if r < 0.5 * best_rank or u > 0.5 * best_unif:
                onset = step
    return ScenarioResult(name, steps, losses, alerts, onset)


DEMO_RUNS = (("simsiam-healthy", "simsiam"), ("simsiam-no-stopgrad", "simsiam_no_stopgrad"))


def run_demo(
    *,
    steps: int = 300,
    every_n_steps: int = 10,
    log_dir: str = "runs",
    tracking_uri: str = "sqlite:///mlflow.db",
    report_dir: Optional[str] = "spherewatch_report",
    experiment_name: str = "spherewatch-demo",
    seed: int = 0,
    progress: bool = True,
    out=None,
) -> Dict[str, dict]:
    """Train a healthy and a collapsing SimSiam encoder side by side, monitored, logged to TensorBoard
    (``<log_dir>/<run>``), MLflow (``tracking_uri``, one run each in ``experiment_name``) and JSONL, then print a
    summary and write a report per run. Returns per run: final values, alerts, MLflow run id, paths."""
    import logging
    import os
    import sys
    import time

    import spherewatch as sw

    out = out or sys.stdout
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    results: Dict[str, dict] = {}
    sw_logger = logging.getLogger("spherewatch")
    level = sw_logger.level
    sw_logger.setLevel(logging.ERROR)  # alerts are summarised below instead of interleaved with the progress bar
    try:
        bar = None
        if progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=steps * len(DEMO_RUNS), unit="step", desc="demo", file=out)
            except ModuleNotFoundError:  # pragma: no cover
                bar = None
        start = time.time()
        for run_name, scenario in DEMO_RUNS:
            fired: List = []
            mon = sw.Monitor(
                every_n_steps=every_n_steps, preset="full", sinks=("tensorboard", "mlflow", "jsonl"),
                log_dir=os.path.join(log_dir, run_name), tracking_uri=tracking_uri, experiment_name=experiment_name,
                run_name=run_name, warn=False, on_alert=fired.append,
            )
            if bar is not None:
                bar.set_postfix_str(run_name)
            run_scenario(scenario, mon, steps=steps, seed=seed,
                         on_step=(lambda s, loss: bar.update(1)) if bar is not None else None)
            mlflow_sink = next((s for s in mon.sinks if getattr(s, "name", "") == "mlflow"), None)
            run_id = getattr(mlflow_sink, "run_id", None)
            mon.close()
            results[run_name] = {
                "scenario": scenario,
                "values": dict(mon.last_values),
                "alerts": [a for a in fired if a.rule != "monitor_fault"],
                "faults": dict(mon.faults),
                "mlflow_run_id": run_id,
                "jsonl": mon.config.resolved_jsonl_path,
                "log_dir": mon.config.log_dir,
            }
        if bar is not None:
            bar.close()
        elapsed = time.time() - start
    finally:
        sw_logger.setLevel(level)
    if report_dir:
        from spherewatch.report import build_report

        for run_name, res in results.items():
            try:
                res["report"] = build_report(res["jsonl"], os.path.join(report_dir, run_name))["html"]
            except Exception as err:  # the demo's report is a bonus, never a crash
                res["report"] = None
                print(f"(report for {run_name} failed: {err})", file=out)
    _print_summary(results, elapsed, log_dir, tracking_uri, out)
    return results


def _print_summary(results: Dict[str, dict], elapsed: float, log_dir: str, tracking_uri: str, out) -> None:
    keys = ["alignment", "uniformity", "effective_rank", "normalized_std", "mean_cosine", "collapsed_dimensions"]
    rows = [["run"] + keys + ["alerts"]]
    for run_name, res in results.items():
        vals = res["values"]
        rows.append([run_name] + [
            f"{vals.get(f'spherewatch/embeddings/{k}', float('nan')):.4g}" for k in keys
        ] + [str(len(res["alerts"]))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\nspherewatch demo: two SimSiam encoders on generated data ({elapsed:.0f} s)\n", file=out)
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)
    print("\nAlerts:", file=out)
    for run_name, res in results.items():
        if not res["alerts"]:
            print(f"  {run_name}: none", file=out)
        for a in res["alerts"]:
            print(f"  {run_name}: step {a.step} [{a.severity}] {a.message}", file=out)
    print("\nWhere to look:", file=out)
    print(f"  tensorboard --logdir {log_dir}", file=out)
    print(f"  mlflow ui --backend-store-uri {tracking_uri}", file=out)
    for run_name, res in results.items():
        if res.get("report"):
            print(f"  report ({run_name}): {res['report']}", file=out)
