"""Fixtures for the report tests: one real, short, collapsing training run logged to all three sinks."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import List

import numpy as np
import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass
class MonitoredRun:
    log_dir: Path  # TensorBoard event file, spherewatch.jsonl and mlflow.db, side by side
    jsonl: Path
    tracking_uri: str
    run_id: str
    alerts: List  # the alerts the Monitor fired


@pytest.fixture(scope="session")
def monitored_run(tmp_path_factory) -> MonitoredRun:
    """SimSiam without stop-gradient for 120 steps, sampled every 10 steps with the full preset, logged to
    JSONL, TensorBoard and a real MLflow SQLite store. It collapses: the uniformity alerts fire."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    import spherewatch as sw
    from spherewatch.demo import run_scenario

    tmp = tmp_path_factory.mktemp("monitored-run")
    import torch

    level = logging.getLogger("spherewatch").level
    logging.getLogger("spherewatch").setLevel(logging.ERROR)  # the alerts are asserted on, not printed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: two threads on a busy 2-core machine run ~10x slower
    try:
        monitor = sw.Monitor(
            every_n_steps=10, preset="full", sinks=("jsonl", "tensorboard", "mlflow"), log_dir=str(tmp),
            tracking_uri=f"sqlite:///{tmp}/mlflow.db", warn=False,
        )
        result = run_scenario("simsiam_no_stopgrad", monitor, steps=120)
        run_id = monitor.sink("mlflow").run_id
        monitor.close()
    finally:
        logging.getLogger("spherewatch").setLevel(level)
        torch.set_num_threads(threads)
    assert any(a.severity == "critical" for a in result.alerts), "the collapsing scenario should fire an alert"
    return MonitoredRun(tmp, tmp / "spherewatch.jsonl", f"sqlite:///{tmp}/mlflow.db", run_id, result.alerts)


def report_source(run: MonitoredRun, kind: str) -> str:
    """The argument that names ``run`` as a source of kind ``kind``."""
    return {"jsonl": str(run.jsonl), "tensorboard": str(run.log_dir), "mlflow": run.run_id}[kind]


@pytest.fixture(scope="session")
def reports(monitored_run, tmp_path_factory):
    """``{kind: build_report(...) result}`` for each of the three sources of :func:`monitored_run`."""
    from spherewatch.report import build_report

    return {
        kind: build_report(report_source(monitored_run, kind), tmp_path_factory.mktemp(f"report-{kind}"),
                           tracking_uri=monitored_run.tracking_uri)
        for kind in ("jsonl", "tensorboard", "mlflow")
    }


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) colours in [0, 1] -> one int per colour (np.unique on ints is ~50x faster than on rows)."""
    q = (rgb * 255).round().astype(np.int64)
    return (q[:, 0] << 16) | (q[:, 1] << 8) | q[:, 2]


def assert_png_shows_something(path) -> np.ndarray:
    """A valid PNG (signature), decodable, and not blank (pixel variance, several distinct colours)."""
    from matplotlib.image import imread

    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, f"{path} is not a PNG file"
    img = imread(str(path))
    rgb = img[..., :3].reshape(-1, 3)
    assert img.shape[0] >= 200 and img.shape[1] >= 200, img.shape
    assert float(rgb.std()) > 0.05, f"{path} looks blank (pixel std {rgb.std():.4f})"
    distinct = np.unique(pack_rgb(rgb)).size
    assert distinct > 50, f"{path} has only {distinct} distinct colours"
    return img


@pytest.fixture(scope="session")
def png_shows_something():
    """The checker :func:`assert_png_shows_something` (fixtures are how tests here share helpers)."""
    return assert_png_shows_something

