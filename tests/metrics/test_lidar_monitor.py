"""The Monitor logs `lidar` when the observed batch has two views (observe(z, z_pos) or observe(views=...))."""
import math

import pytest
import torch

import spherewatch as sw
import spherewatch.metrics as M
from spherewatch import SpherewatchError
from spherewatch.config import PRESETS
from spherewatch.sinks.memory import MemorySink


def _views(b=256, v=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, d, generator=g) + 0.3 * torch.randn(b, v, d, generator=g)


def _logged_lidar(**observe):
    sink = MemorySink()
    with sw.Monitor(every_n_steps=1, preset="full", sinks=[sink], warn=False, strict=True) as mon:
        mon.observe(**observe)
        mon.step(0)
    return sink.last("spherewatch/lidar")


def test_monitor_logs_lidar_from_z_and_z_pos_and_from_views():
    x = _views()
    expected = M.lidar(x).item()
    assert _logged_lidar(z=x[:, 0], z_pos=x[:, 1]) == pytest.approx(expected, rel=1e-5)
    assert _logged_lidar(views=x) == pytest.approx(expected, rel=1e-5)
    assert _logged_lidar(z=x[:, 0]) is None  # one view: nothing to measure


def test_monitor_uses_every_view_of_observe_views():
    x = _views(v=5)
    assert _logged_lidar(views=x) == pytest.approx(M.lidar(x).item(), rel=1e-5)
    assert M.lidar(x).item() != pytest.approx(M.lidar(x[:, :2]).item(), rel=1e-2)  # the extra views matter
    sink = MemorySink()
    with sw.Monitor(every_n_steps=1, metrics=["alignment", "uniformity_pos"], sinks=[sink], warn=False,
                    strict=True) as mon:
        mon.observe(views=x)
        mon.step(0)
    assert sink.last("spherewatch/alignment") == pytest.approx(M.alignment(x[:, 0], x[:, 1]).item(),
                                                                          rel=1e-5)


def test_micro_batches_of_views_fill_one_window_and_another_view_count_there_is_reported():
    x = _views(b=64, v=3)
    sink = MemorySink()
    with sw.Monitor(every_n_steps=1, preset="full", sinks=[sink], warn=False, every_micro_batch=True) as mon:
        mon.observe(views=x[:32])
        mon.observe(views=x[32:])
        mon.step(0)
        assert mon.last_values["spherewatch/lidar"] == pytest.approx(M.lidar(x).item(), rel=1e-5)
        assert mon.last_values["spherewatch/rows"] == 64
        mon.observe(views=x[:32])
        mon.observe(views=_views(b=32, v=4))  # same window, another number of views: reported, not crashing
        mon.step(1)
        assert mon.last_values["spherewatch/rows"] == 32
        assert any(key.startswith("capture") for key in mon.faults), mon.faults


def test_observe_rejects_views_together_with_z():
    x = _views()
    with sw.Monitor(every_n_steps=1, sinks=[MemorySink()], warn=False) as mon:
        with pytest.raises(SpherewatchError, match="either `z`"):
            mon.observe(x[:, 0], views=x)


def test_lidar_is_in_the_full_preset_only():
    assert "lidar" in PRESETS["full"]
    assert "lidar" not in PRESETS["standard"] and "lidar" not in PRESETS["cheap"]


def test_compute_logs_lidar_for_paired_views_and_not_without():
    from spherewatch.compute import compute_tap_metrics

    x = _views()
    scalars, _ = compute_tap_metrics(x[:, 0], x[:, 1], None, ["lidar"], spectral=True)
    assert scalars["lidar"].item() == pytest.approx(M.lidar(x).item(), rel=1e-6)
    scalars, _ = compute_tap_metrics(x[:, 0], None, None, ["lidar"], spectral=True)
    assert "lidar" not in scalars
    bad = x[:, 1].clone()
    bad[3, 0] = float("nan")
    scalars, _ = compute_tap_metrics(x[:, 0], bad, None, ["lidar"], spectral=True)
    assert math.isnan(scalars["lidar"].item())
