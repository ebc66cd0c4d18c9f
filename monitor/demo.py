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
import logging
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from spherewatch.alerts.verdict import collapse_alerts, verdict
from spherewatch.catalogue import OVERVIEW, key_specs
from spherewatch.compute import compute_tap_metrics
from spherewatch.config import METRICS
from spherewatch.keys import parse_key
from spherewatch.metrics import effective_rank, uniformity
from spherewatch.monitor import Monitor
from spherewatch.report import build_report
from spherewatch.sinks.mlflow import REPORT_ARTIFACT_DIR

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
DEMO_EXPERIMENT = "spherewatch-demo"
LOSS_KEY = "train/loss"
LOSS_EVERY = 5  # the training loss is logged every 5 steps (beside the metrics, every 10)
MAX_ALERT_LINE = 160
# MLflow 3's model-training view of an experiment, on the runs' charts (its default is the GenAI overview)
MLFLOW_CHARTS_VIEW = "workflowType=machine_learning&compareRunsMode=CHART"


def _hyperparameters(scenario: str, steps: int, batch_size: int, seed: int) -> Dict[str, object]:
    kind = SCENARIOS[scenario]
    return {
        "demo.scenario": scenario, "demo.loss": kind.loss, "demo.stop_gradient": kind.stop_gradient,
        "demo.optimizer": "SGD(momentum=0.9)", "demo.lr": kind.lr, "demo.weight_decay": kind.weight_decay,
        "demo.batch_size": batch_size, "demo.steps": steps, "demo.seed": seed,
    }


def _replace_previous_runs(log_dir: str, report_dir: Optional[str], tracking_uri: str, experiment_name: str) -> int:
    """Remove what an earlier demo left under the same names: its TensorBoard/JSONL folders, its reports, its MLflow
    runs (deleted, as the UI's delete does). Returns the number of MLflow runs removed."""
    names = [name for name, _ in DEMO_RUNS]
    for name in names:
        for root in (log_dir, report_dir):
            if root and os.path.isdir(os.path.join(root, name)):
                shutil.rmtree(os.path.join(root, name))
    if report_dir and os.path.isfile(os.path.join(report_dir, "report.html")):
        shutil.rmtree(report_dir)
    if tracking_uri.startswith("sqlite:///") and not os.path.isfile(tracking_uri[len("sqlite:///"):]):
        return 0  # a fresh store: nothing to replace
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return 0
    if experiment.lifecycle_stage != "active":
        client.restore_experiment(experiment.experiment_id)
    old = client.search_runs([experiment.experiment_id], max_results=1000)
    removed = 0
    for run in old:
        if run.info.run_name in names:
            client.delete_run(run.info.run_id)
            removed += 1
    return removed


def _executable(name: str, module: str) -> str:
    """How to run ``name`` as printed: the venv's own script (relative when under the current folder), else
    ``python -m module`` with this interpreter."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(local) and os.access(local, os.X_OK):
        rel = os.path.relpath(local)
        return rel if not rel.startswith("..") else local
    if sys.prefix == sys.base_prefix and shutil.which(name):  # no virtualenv: the one on PATH is this one's
        return name
    return f"{sys.executable} -m {module}"


def _verdict_cell(alerts) -> str:
    """The summary table's short form of the one verdict (:mod:`spherewatch.alerts.verdict`): the step of the first
    collapse alert, or ``healthy``; the full verdict heads the run's alerts below the table."""
    fired = collapse_alerts(alerts)
    return f"collapsed at step {min(a.step for a in fired)}" if fired else "healthy"


def _compact(alert) -> str:
    """``step 10 warning  uniformity rose above ...`` without the advice (printed once per run)."""
    first = (alert.message or alert.rule).split(": ", 1)[0].split(" Check ", 1)[0].rstrip(".")
    line = f"step {alert.step:>4} {alert.severity:<8} {first}"
    return line if len(line) <= MAX_ALERT_LINE else line[: MAX_ALERT_LINE - 1] + "…"


def _clip(line: str) -> str:
    return line if len(line) <= MAX_ALERT_LINE else line[: MAX_ALERT_LINE - 1] + "…"


def _advice(alert) -> str:
    message = alert.message or ""
    return message.split(": ", 1)[1].strip() if ": " in message else ""


def run_demo(
    *,
    steps: int = 300,
    every_n_steps: int = 10,
    log_dir: str = "runs",
    tracking_uri: str = "sqlite:///mlflow.db",
    report_dir: Optional[str] = "spherewatch_report",
    experiment_name: str = DEMO_EXPERIMENT,
    seed: int = 0,
    progress: bool = True,
    out=None,
) -> Dict[str, dict]:
    """Train a healthy and a collapsing SimSiam encoder side by side, monitored, logged to TensorBoard
    (``<log_dir>/<run>``), MLflow (``tracking_uri``, one run each in ``experiment_name``) and JSONL with their
    training loss and hyperparameters, then print a summary and write one report comparing both runs.

    Every call starts clean: it replaces what an earlier demo left under the same names (the two run folders and
    reports are removed, the two MLflow runs deleted), so a second demo shows exactly what the first did.
    The progress bar is drawn only on a terminal (``progress`` and ``out.isatty()``), once setup (imports, stores,
    event files) is done, so its ETA is the training's.

    Returns per run: final values, alerts, MLflow run id, experiment id, paths.
    """
    out = out or sys.stdout
    threads = torch.get_num_threads()
    # One thread: these matrices are small, and two OpenMP threads on a busy 2-core machine run ~10x slower.
    torch.set_num_threads(1)
    results: Dict[str, dict] = {}
    setup_start = time.time()
    import mlflow  # noqa: F401 - imported before its loggers are quietened (its import configures them)

    quiet = {name: logging.getLogger(name).level for name in ("spherewatch", "mlflow", "alembic")}
    for name in quiet:  # alerts are summarised below; MLflow's and alembic's INFO lines would break the bar
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        replaced = _replace_previous_runs(log_dir, report_dir, tracking_uri, experiment_name)
        monitors = []
        for run_name, scenario in DEMO_RUNS:
            fired: List = []
            mon = Monitor(
                every_n_steps=every_n_steps, preset="full", sinks=("tensorboard", "mlflow", "jsonl"),
                log_dir=os.path.join(log_dir, run_name), tracking_uri=tracking_uri, experiment_name=experiment_name,
                run_name=run_name, warn=False, on_alert=fired.append,
            )
            mon.attach_report = False  # the demo attaches its comparison report instead (below)
            mon.sinks  # noqa: B018 - open the stores and event files now: setup, not training time
            mon.log_params(_hyperparameters(scenario, steps, 256, seed))
            monitors.append((run_name, scenario, mon, fired))
        _warm_up()
        setup = time.time() - setup_start
        bar = None
        if progress and getattr(out, "isatty", lambda: False)():
            try:
                from tqdm import tqdm

                bar = tqdm(total=steps * len(DEMO_RUNS), unit="step", desc="demo", file=out, leave=False)
            except ModuleNotFoundError:  # pragma: no cover
                bar = None
        start = time.time()
        for run_name, scenario, mon, fired in monitors:
            run_start = time.time()
            if bar is not None:
                bar.set_postfix_str(run_name)

            def on_step(step: int, loss: float, mon=mon) -> None:
                if step % LOSS_EVERY == 0 or step == 1:
                    mon.log(step, {LOSS_KEY: loss})
                if bar is not None:
                    bar.update(1)

            result = run_scenario(scenario, mon, steps=steps, seed=seed, on_step=on_step)
            mlflow_sink = next((s for s in mon.sinks if getattr(s, "name", "") == "mlflow"), None)
            run_id = getattr(mlflow_sink, "run_id", None)
            mon.close()
            if bar is None:
                print(f"  {run_name}: {steps} steps in {time.time() - run_start:.0f} s", file=out)
            results[run_name] = {
                "scenario": scenario,
                "values": dict(mon.last_values),
                "losses": result.losses,
                "alerts": collapse_alerts(fired),
                "faults": dict(mon.faults),
                "mlflow_run_id": run_id,
                "jsonl": mon.config.resolved_jsonl_path,
                "log_dir": mon.config.log_dir,
            }
        if bar is not None:
            bar.close()
        elapsed = time.time() - start
        report = None
        if report_dir:
            report = _comparison_report(results, report_dir, tracking_uri, out)
    finally:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        torch.set_num_threads(threads)
    experiment_id = _experiment_id(tracking_uri, experiment_name)
    for res in results.values():
        res["experiment_id"] = experiment_id
        res["report"] = report
    _print_summary(results, setup, elapsed, log_dir, tracking_uri, experiment_id, report, replaced, out)
    return results


def _warm_up() -> None:
    """Pay the first-call costs (lazy imports, LAPACK and autograd start-up) before the progress bar starts, so its
    ETA is the training's from the first step on."""
    z = torch.randn(64, 16)
    compute_tap_metrics(z, z + 0.1, None, METRICS, spectral=True)
    run_scenario("simsiam", None, steps=1, batch_size=32, probe_every=1)


def _comparison_report(results: Dict[str, dict], report_dir: str, tracking_uri: str, out) -> Optional[str]:
    """One report of both runs on shared axes, also attached to each MLflow run (``spherewatch/report/``)."""
    try:
        report = build_report([res["jsonl"] for res in results.values()], report_dir, names=list(results))["html"]
    except Exception as err:  # the demo's report is a bonus, never a crash
        print(f"(the report failed: {type(err).__name__}: {err})", file=out)
        return None
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        for res in results.values():
            if res["mlflow_run_id"]:
                client.log_artifacts(res["mlflow_run_id"], report_dir, REPORT_ARTIFACT_DIR)
    except Exception as err:  # pragma: no cover - the report stays on disk
        print(f"(the report could not be attached to the MLflow runs: {err})", file=out)
    return report


def _experiment_id(tracking_uri: str, experiment_name: str) -> Optional[str]:
    try:
        from mlflow import MlflowClient

        experiment = MlflowClient(tracking_uri).get_experiment_by_name(experiment_name)
    except Exception:  # pragma: no cover - MLflow missing or the store unreadable: no deep link
        return None
    return None if experiment is None else experiment.experiment_id


def _print_summary(results: Dict[str, dict], setup: float, elapsed: float, log_dir: str, tracking_uri: str,
                   experiment_id: Optional[str], report: Optional[str], replaced: int, out) -> None:
    keys = [spec.name for spec in key_specs() if spec.category == OVERVIEW]  # the four that answer "did it collapse"
    rows = [["run"] + keys + ["loss", "alerts", "verdict"]]
    for run_name, res in results.items():
        vals = {parts[1]: v for k, v in res["values"].items() if (parts := parse_key(k)) is not None}
        alerts = res["alerts"]
        rows.append([run_name] + [
            f"{vals.get(k, float('nan')):.4g}" for k in keys
        ] + [f"{res['losses'][-1]:.3g}" if res["losses"] else "nan", str(len(alerts)), _verdict_cell(alerts)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\nspherewatch demo: two SimSiam encoders on generated data ({elapsed:.0f} s training, {setup:.0f} s setup)",
          file=out)
    if replaced:
        print(f"(replaced the previous demo: {replaced} MLflow run(s) deleted, run folders rewritten)", file=out)
    print(file=out)
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i in (0, len(row) - 1) else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)
    collapsing = [r for r in results.values() if r["alerts"]]
    if collapsing and any(not r["alerts"] for r in results.values()):
        print("\nThe collapsing run's loss looks as good as (or better than) the healthy run's: only the geometry "
              "shows the collapse.", file=out)
    print("\nAlerts:", file=out)
    for run_name, res in results.items():
        if not res["alerts"]:
            print(f"  {run_name}: none", file=out)
            continue
        print(_clip(f"  {run_name}: {verdict(res['alerts'])}"), file=out)
        advice: List[str] = []
        for a in res["alerts"]:
            print(f"    {_compact(a)}", file=out)
            hint = _advice(a)
            if hint and hint not in advice:
                advice.append(hint)
        for hint in advice[:2]:
            what, _, check = hint.partition(" Check ")
            print(_clip(f"    what it means: {what}"), file=out)
            if check:
                print(_clip(f"      check: {check}"), file=out)
    tensorboard = _executable("tensorboard", "tensorboard.main")
    mlflow = _executable("mlflow", "mlflow")
    print("\nWhere to look (run these, then open the URLs):", file=out)
    print(f"  {tensorboard} --logdir {log_dir}", file=out)
    print("      http://localhost:6006/#custom_scalars   (Custom Scalars: the collapse overview first)", file=out)
    print(f"  {mlflow} ui --backend-store-uri {tracking_uri} --port 5000", file=out)
    if experiment_id is not None:
        print(f"      http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?{MLFLOW_CHARTS_VIEW}"
              "   (model training: the runs' charts)", file=out)
    if report:
        print(f"  report (both runs on shared axes): {report}", file=out)
