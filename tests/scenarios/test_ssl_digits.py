"""Default rules on real self-supervised training (scikit-learn's digits, methods written from the papers): silent on
healthy runs, an alert within one sampling interval of the onset the probe measures, nothing critical before it.

A few short runs; benchmarks/scenarios.py runs every scenario with several seeds and prints the table.
"""
import pytest

import spherewatch as sw
from scenarios.digits_ssl import SCENARIOS, run_lightning, run_plain


def _check_collapse(run, alerts, every):
    assert run.onset is not None, f"{run.name}: the probe saw no collapse"
    first = min(a.step for a in alerts)
    assert first <= run.onset + every, f"{run.name}: onset {run.onset}, first alert {first}"
    critical = [a.step for a in alerts if a.severity == "critical"]
    assert not critical or min(critical) >= run.onset, f"{run.name}: critical at {min(critical)} before {run.onset}"


@pytest.mark.parametrize("name,seed", [("simclr", 0), ("simsiam", 1), ("vicreg", 0)])
def test_healthy_ssl_runs_raise_no_alert_at_default_settings(name, seed):
    mon = sw.Monitor(sinks=("memory",), warn=False)
    run = run_plain(name, mon, seed=seed)
    mon.close()
    assert mon.alerts == [], [str(a) for a in mon.alerts]
    values = mon.sink("memory").scalars[-1][1]
    assert values["spherewatch/rows"] == 128 and "spherewatch/uniformity_stderr" in values
    assert run.probe[-1][1] > 0.8  # kNN accuracy on the fixed probe: the encoder did learn


@pytest.mark.parametrize("name", ["simsiam_no_stopgrad", "vicreg_no_variance", "simclr_lr_blowup"])
def test_collapsing_ssl_runs_alert_within_one_sampling_interval(name):
    assert SCENARIOS[name].collapses
    mon = sw.Monitor(sinks=("memory",), warn=False)
    run = run_plain(name, mon, seed=0)
    mon.close()
    _check_collapse(run, list(mon.alerts), mon.config.every_n_steps)


def test_byol_without_predictor_is_caught_under_lightnings_trainer(tmp_path):
    from spherewatch.integrations.lightning import MonitorCallback

    cb = MonitorCallback(output_key="z", output_key_pos="z_pos", sinks=("memory",), warn=False, log_to_module=False)
    run = run_lightning("byol_no_predictor", cb, seed=0, root=str(tmp_path))
    alerts = list(cb.monitor.alerts)
    _check_collapse(run, alerts, cb.config.every_n_steps)
    assert {a.rule for a in alerts} >= {"uniformity_degradation", "mean_cosine_collapse"}
