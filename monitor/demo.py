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
import importlib.util
import logging
import os
import shutil
import sys
import textwrap
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from spherewatch.alerts.alert import WIDTH, split_message
from spherewatch.alerts.verdict import collapse_alerts, verdict
from spherewatch.catalogue import OVERVIEW, key_specs
from spherewatch.compute import compute_tap_metrics
from spherewatch.config import METRICS
from spherewatch.keys import parse_key
from spherewatch.metrics import effective_rank, uniformity
from spherewatch.monitor import Monitor
from spherewatch.report import build_report
from spherewatch.sinks.mlflow_view import view_url
from spherewatch.sinks.tensorboard import custom_scalars_url

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
    if not tracking_uri:
        return 0  # MLflow is not installed: no runs to replace
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


def _available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module hidden in sys.modules
        return False


#: What the demo does with each optional extra: (module it needs, the part it brings, the extra that installs it).
PARTS = (
    ("tensorboard", "TensorBoard logging", "tensorboard"),
    ("mlflow", "MLflow logging", "mlflow"),
    ("matplotlib", "the HTML report", "report"),
)


def missing_parts(report: bool = True) -> List[str]:
    """One ``skipped: <what> (pip install 'spherewatch[<extra>]')`` line per part of the demo whose extra is
    missing (the demo runs with any subset of the extras; JSONL is always written)."""
    return [f"skipped: {what} (pip install 'spherewatch[{extra}]')" for module, what, extra in PARTS
            if (report or extra != "report") and not _available(module)]


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
    Any subset of the extras will do: TensorBoard, MLflow and the report are each skipped when their extra is
    missing, with one ``skipped: ... (pip install 'spherewatch[<extra>]')`` line in the summary (:func:`missing_parts`);
    JSONL is always written. The progress bar is drawn only on a terminal (``progress`` and ``out.isatty()``),
    once setup (imports, stores, event files) is done, so its ETA is the training's.

    Returns per run: final values, alerts, MLflow run id, experiment id, paths.
    """
    out = out or sys.stdout
    threads = torch.get_num_threads()
    # One thread: these matrices are small, and two OpenMP threads on a busy 2-core machine run ~10x slower.
    torch.set_num_threads(1)
    results: Dict[str, dict] = {}
    setup_start = time.time()
    has_tb, has_mlflow, has_mpl = (_available(module) for module, _, _ in PARTS)
    skipped = missing_parts(report=bool(report_dir))
    if not has_mpl:
        report_dir = None
    sinks = tuple(name for name, ok in (("tensorboard", has_tb), ("mlflow", has_mlflow), ("jsonl", True)) if ok)
    if has_mlflow:
        import mlflow  # noqa: F401 - imported before its loggers are quietened (its import configures them)

    quiet = {name: logging.getLogger(name).level for name in ("spherewatch", "mlflow", "alembic")}
    for name in quiet:  # alerts are summarised below; MLflow's and alembic's INFO lines would break the bar
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        replaced = _replace_previous_runs(log_dir, report_dir, tracking_uri if has_mlflow else "", experiment_name)
        monitors = []
        for run_name, scenario in DEMO_RUNS:
            fired: List = []
            mon = Monitor(
                every_n_steps=every_n_steps, preset="full", sinks=sinks,
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
            except ModuleNotFoundError:  # tqdm comes with the `all` extra: without it, no bar
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
            results[run_name] = {
                "scenario": scenario,
                "values": dict(mon.last_values),
                "losses": result.losses,
                "alerts": collapse_alerts(fired),
                "faults": dict(mon.faults),
                "mlflow_run_id": run_id,
                "jsonl": mon.config.resolved_jsonl_path,
                "log_dir": mon.config.log_dir,
                "seconds": time.time() - run_start,
            }
        if bar is not None:
            bar.close()
        elapsed = time.time() - start
        report = None
        if report_dir:
            report = _comparison_report(results, report_dir, tracking_uri if has_mlflow else None, out)
    finally:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        torch.set_num_threads(threads)
    experiment_id = _experiment_id(tracking_uri, experiment_name) if has_mlflow else None
    for res in results.values():
        res["experiment_id"] = experiment_id
        res["report"] = report
        res["skipped"] = skipped
    _print_summary(results, setup, elapsed, log_dir, tracking_uri if has_mlflow else None, experiment_id, report,
                   replaced, out, tensorboard=has_tb, skipped=skipped)
    return results


def _warm_up() -> None:
    """Pay the first-call costs (lazy imports, LAPACK and autograd start-up) before the progress bar starts, so its
    ETA is the training's from the first step on."""
    z = torch.randn(64, 16)
    compute_tap_metrics(z, z + 0.1, None, METRICS, spectral=True)
    run_scenario("simsiam", None, steps=1, batch_size=32, probe_every=1)


def _comparison_report(results: Dict[str, dict], report_dir: str, tracking_uri: Optional[str], out) -> Optional[str]:
    """One report of both runs on shared axes, also attached to each MLflow run (``spherewatch/report/``)."""
    try:
        report = build_report([res["jsonl"] for res in results.values()], report_dir, names=list(results))["html"]
    except Exception as err:  # the demo's report is a bonus, never a crash
        print(f"(the report failed: {type(err).__name__}: {err})", file=out)
        return None
    if tracking_uri is None:
        return report
    try:
        from mlflow import MlflowClient

        from spherewatch.sinks.mlflow import REPORT_ARTIFACT_DIR

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


def _print_summary(results: Dict[str, dict], setup: float, elapsed: float, log_dir: str, tracking_uri: Optional[str],
                   experiment_id: Optional[str], report: Optional[str], replaced: int, out, *, tensorboard: bool = True,
                   skipped: Sequence[str] = ()) -> None:
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
    for line in skipped:
        print(line, file=out)
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
        print(_fill(f"{run_name}: {verdict(res['alerts'])}", "  "), file=out)
        for line in alert_lines(res["alerts"]):
            print(line, file=out)
    print("\nWhere to look (run these, then open the URLs):", file=out)
    if tensorboard:
        print("  TensorBoard, Custom Scalars (the collapse overview first):", file=out)
        print(f"    {_executable('tensorboard', 'tensorboard.main')} --logdir {log_dir}", file=out)
        print(f"    {custom_scalars_url()}", file=out)
    if tracking_uri is not None:
        print("  MLflow, spherewatch's chart view (the collapse overview first, both runs):", file=out)
        print(f"    {_executable('mlflow', 'mlflow')} ui --backend-store-uri {tracking_uri} --port 5000", file=out)
        if experiment_id is not None:
            print(f"    {view_url(experiment_id)}", file=out)
    if report:
        print(f"  The report, both runs on shared axes: {report}", file=out)
    print(f"  Every value, alert and param as JSON lines: {os.path.join(log_dir, '<run>', 'spherewatch.jsonl')}", file=out)


def _fill(text: str, indent: str, more: str = "    ") -> str:
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent + more, break_on_hyphens=False)


def alert_lines(alerts: Sequence) -> List[str]:
    """The demo summary's alerts of one run, each with its advice beside it: grouped by metric in the order they
    first fired, a group opens with what the metric's alerts mean, lists its alerts (step, severity, what happened)
    and ends with what to check; advice a previous group gave is referred to, not repeated. Lines fit
    :data:`~spherewatch.alerts.alert.WIDTH`."""
    groups: Dict[str, List] = {}
    for a in alerts:
        parts = parse_key(a.key)
        groups.setdefault(parts[1] if parts is not None else a.key, []).append(a)
    lines: List[str] = []
    checked: Dict[str, str] = {}  # check text -> the metric that gave it
    for metric, group in groups.items():
        split = [split_message(a.message or a.rule, a.key) for a in group]
        what = next((w for _, w, _ in split if w), "")
        lines.append(_fill(f"{metric}: {what}" if what else metric, "    "))
        for a, (head, _, _) in zip(group, split):
            head = head.replace(" (tap 'embeddings')", "").replace(f" at step {a.step}", "")
            head = head[len(metric) + 1:] if head.startswith(metric + " ") else head
            lines.append(_fill(f"step {a.step:>4} {a.severity:<8} {head}", "      ", " " * 19))
        check = next((c for _, _, c in split if c), "")
        if check and check in checked:
            lines.append(_fill(f"check: as for {checked[check]} above", "      "))
        elif check:
            checked[check] = metric
            lines.append(_fill(f"check: {check}", "      "))
    return lines
