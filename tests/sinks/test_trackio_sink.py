"""TrackioSink with the real trackio (local SQLite store under TRACKIO_DIR): every point once at its step, the
spectrum as a histogram, one trackio alert per episode; the host's run when it has one, else a run of its own."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("trackio")

import spherewatch as sw  # noqa: E402

STEP_KEYS = ("spherewatch/uniformity",)


@pytest.fixture
def trackio_dir(tmp_path, monkeypatch):
    import trackio.sqlite_storage
    import trackio.utils

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path))
    for module in (trackio.utils, trackio.sqlite_storage):  # read once at import: point them at tmp_path
        if hasattr(module, "TRACKIO_DIR"):
            monkeypatch.setattr(module, "TRACKIO_DIR", tmp_path)
    return tmp_path


def _train(mon, steps, log=lambda step: None, collapse_at=None):
    g = torch.Generator().manual_seed(0)
    for step in steps:
        z = torch.randn(64, 16, generator=g)
        if collapse_at is not None and step >= collapse_at:
            z = z[:, :1] * torch.ones(1, 16) + 1e-3 * z
        mon.observe(z)
        log(step)
        mon.step(step)


def test_the_hosts_trackio_run_gets_every_point_once_and_one_alert_per_episode(trackio_dir):
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    run = trackio.init(project="host", name="r1", auto_log_cpu=False, auto_log_gpu=False)
    memory = sw.sinks.MemorySink()
    mon = sw.Monitor(sinks=("trackio", memory), every_n_steps=5, warn=False, log_dir=str(trackio_dir / "sw"),
                     alert_channels=("trackio",), preset="full")
    _train(mon, range(40), lambda step: run.log({"train/loss": 1.0 / (step + 1)}, step=step), collapse_at=20)
    mon.close()
    trackio.finish()
    assert (trackio_dir / "host.db").exists()
    logs = SQLiteStorage.get_logs("host", "r1")
    ours = [row for row in logs if "spherewatch/uniformity" in row]
    assert [row["step"] for row in ours] == [step for step, _ in memory.scalars]
    for row, (step, values) in zip(ours, memory.scalars):
        for key, value in values.items():
            assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (step, key)
    assert len([row for row in logs if "train/loss" in row]) == 40
    spectra = [(row["step"], row["spherewatch/spectrum"]) for row in ours if "spherewatch/spectrum" in row]
    assert [s for s, _ in spectra] == [s for s, k, _ in memory.histograms if k == "spherewatch/spectrum"]
    assert all(h["_type"] == "trackio.histogram" for _, h in spectra)
    fired = [a for a in memory.alerts if a.status == "fired" and a.count == 1 and a.kind == "collapse"]
    alerts = SQLiteStorage.get_alerts("host", run_name="r1")
    assert fired and len(alerts) == len(fired)
    assert sorted((a["step"], a["level"]) for a in alerts) == sorted(
        (a.step, {"warning": "warn", "critical": "error"}[a.severity]) for a in fired)
    assert ours[-1]["spherewatch/alerts/count"] == len(fired)  # every fired alert counted, in its evaluation's row
    assert [p for p in SQLiteStorage.get_projects() if p] == ["host"]  # no second project or run


def test_without_a_host_run_it_opens_one_with_the_configuration(trackio_dir):
    from trackio.sqlite_storage import SQLiteStorage

    mon = sw.Monitor(sinks=("trackio",), every_n_steps=2, warn=False, log_dir=str(trackio_dir / "sw"),
                     experiment_name="own", run_name="sw-run")
    _train(mon, range(10))
    mon.close()
    logs = SQLiteStorage.get_logs("own", "sw-run")
    assert [row["step"] for row in logs if "spherewatch/uniformity" in row] == [0, 2, 4, 6, 8]
    config = SQLiteStorage.get_run_config("own", "sw-run")
    assert config["spherewatch"]["every_n_steps"] == "2"
