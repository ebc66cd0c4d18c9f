"""Fixtures for the fault-matrix tests: monitors that are always closed (the MLflow store: tests/conftest.py)."""
from __future__ import annotations

import logging
from typing import Any, Callable, List

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test's tiny tensors on one intra-op thread, then restore the setting.

    On a loaded 2-core machine two OpenMP threads that spin at barriers while the webhook, HTTP server and sink
    threads of these tests wake up make a ~1 ms training step take ~20 ms; the tests measure the monitor, not that.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_monitor(tmp_path) -> Callable[..., Any]:
    """``make_monitor(**overrides)``: a ``spherewatch.Monitor`` writing under this test's ``tmp_path``.

    Defaults: ``warn=False`` (alerts are asserted on, not printed), ``sample_first_step=False`` (evaluations at
    multiples of ``every_n_steps`` only), ``log_dir`` in ``tmp_path``. Every monitor made is closed at teardown, so
    a failing assertion leaks no thread, file or server connection into the next test.
    """
    import spherewatch as sw

    made: List[Any] = []

    def make(**overrides: Any) -> Any:
        overrides.setdefault("warn", False)
        overrides.setdefault("sample_first_step", False)
        overrides.setdefault("log_dir", str(tmp_path / "runs"))
        mon = sw.Monitor(**overrides)
        made.append(mon)
        return mon

    yield make
    for mon in made:
        try:
            mon.close()
        except Exception:  # noqa: BLE001 - a strict monitor may raise on close; the test already said what it wanted
            pass


@pytest.fixture
def spherewatch_logs(caplog):
    """``caplog`` capturing every ``spherewatch`` record from DEBUG up (secrets must not appear at any level)."""
    caplog.set_level(logging.DEBUG, logger="spherewatch")
    return caplog
