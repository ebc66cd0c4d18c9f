"""One failing metric drops only itself (reported once, with its own hint); degenerate input reads as collapsed."""
import logging

import pytest
import torch

import spherewatch as sw
import spherewatch.metrics as M
from spherewatch.compute import NORM_FLOOR, compute_tap_metrics
from spherewatch.config import METRICS

K = "spherewatch/"


def _eigh_fails(*args, **kwargs):
    raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")


def test_a_failing_metric_drops_only_itself_and_is_reported_once(monkeypatch, caplog):
    monkeypatch.setattr(M, "effective_rank", _eigh_fails)
    faults = []
    mon = sw.Monitor(every_n_steps=1, sinks=("memory",), warn=False, on_alert=faults.append)
    with caplog.at_level(logging.WARNING, logger="spherewatch"):
        for s in range(4):
            mon.observe(torch.randn(64, 16))
            mon.step(s)
    values = mon.last_values
    assert K + "effective_rank" not in values
    for cheap in ("uniformity", "normalized_std", "mean_cosine", "collapsed_dimensions", "norm_mean"):
        assert K + cheap in values
    assert mon.faults == {"metric:embeddings/effective_rank": 4}
    assert [(a.kind, a.key, a.step) for a in faults] == [("fault", "spherewatch/monitor/metric:embeddings/effective_rank", 0)]
    assert "effective_rank was not logged at this step; the other metrics were" in faults[0].message
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "no usable embeddings" in m]
    assert len([m for m in messages if "metric:embeddings/effective_rank failed" in m]) == 1
    mon.close()


def test_compute_tap_metrics_returns_failures_and_raises_without_a_sink(monkeypatch):
    monkeypatch.setattr(M, "spectrum", _eigh_fails)
    failures = {}
    sc, hi = compute_tap_metrics(torch.randn(32, 8), None, None, METRICS, spectral=True, failures=failures)
    assert set(failures) == {"spectrum"}  # collapsed_dimensions and alpha_req go with it
    assert "spectrum" not in hi and "collapsed_dimensions" not in sc and "effective_rank" in sc
    with pytest.raises(torch.linalg.LinAlgError):
        compute_tap_metrics(torch.randn(32, 8), None, None, METRICS, spectral=True)


COLLAPSED = {"mean_cosine": 1.0, "uniformity": 0.0, "normalized_std": 0.0, "effective_rank": 1.0,
             "effective_rank_centered": 1.0, "dead_dimensions": 1.0, "collapsed_dimensions": 16.0,
             "zero_norm_fraction": 1.0}


@pytest.mark.parametrize("scale", [0.0, 1e-12, NORM_FLOOR / 100])
def test_zero_and_near_zero_norm_batches_read_as_collapsed_in_every_metric(scale):
    z = torch.randn(128, 16) * scale
    sc, _ = compute_tap_metrics(z, z.clone(), None, METRICS, spectral=True)
    got = {k: float(sc[k]) for k in COLLAPSED}
    assert got == pytest.approx(COLLAPSED, abs=1e-5)


def test_identical_rows_count_every_dimension_as_collapsed():
    z = torch.ones(64, 16) * 3.0
    sc, _ = compute_tap_metrics(z, None, None, METRICS, spectral=True)
    assert float(sc["collapsed_dimensions"]) == 16 and float(sc["mean_cosine"]) == pytest.approx(1.0)
    assert float(sc["zero_norm_fraction"]) == 0.0


def test_healthy_rows_are_untouched_by_the_norm_floor():
    z = torch.randn(256, 16)
    sc, _ = compute_tap_metrics(z, None, None, METRICS, spectral=True)
    assert float(sc["uniformity"]) == pytest.approx(float(M.uniformity(z)), rel=1e-6)
    assert float(sc["effective_rank"]) == pytest.approx(float(M.effective_rank(z)), rel=1e-6)
    assert float(sc["zero_norm_fraction"]) == 0.0
