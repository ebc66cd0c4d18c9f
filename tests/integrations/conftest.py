"""Fixtures for the adapter tests: one thread per test module, an MLflow SQLite store copied from a migrated
template, and MLflow's process-global settings put back after each test that touches them."""
from __future__ import annotations

import math
import os

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest, and steadiest on a loaded 2-core machine, on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def mlflow_uri(mlflow_uri, monkeypatch):
    """tests/conftest.py's fresh SQLite tracking URI; MLflow's global tracking URI, env var and active runs are
    restored after (the adapters set them)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous_uri, previous_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "spherewatch-tests")
    yield mlflow_uri
    for _ in range(8):
        if mlflow.active_run() is None:
            break
        mlflow.end_run()
    mlflow.set_tracking_uri(previous_uri)
    if previous_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _assert_same_state(a, b, path="state"):
    """Recursive equality of two Monitor state dicts; floats to 1e-4 relative; alert wall times ignored."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        keys.discard("time")
        for k in keys:
            assert k in a and k in b, f"{path}.{k} only in one state"
            _assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


@pytest.fixture
def assert_same_state():
    """``assert_same_state(a, b)``: two Monitor states agree (floats to 1e-4, wall times ignored)."""
    return _assert_same_state
