"""Default alert rules against real (small) training runs: silent when healthy, early when collapsing.

Each scenario trains a small encoder on generated data (spherewatch.demo) with the monitor at its DEFAULT settings
(every 50 steps, default rules). The collapse onset is measured independently, on a fixed probe batch every 5 steps.
"""
import pytest
import torch

import spherewatch as sw
from spherewatch.demo import SCENARIOS, run_scenario

SEEDS = (0, 1, 2)
STEPS = 400
COLLAPSE_RULES = set(sw.alerts.DEFAULT_RULE_SETTINGS)


def _run(name, seed):
    torch.set_num_threads(1)
    mon = sw.Monitor(sinks=("memory",), warn=False)
    result = run_scenario(name, mon, steps=STEPS, seed=seed)
    mon.close()
    return mon, result


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", [n for n, s in SCENARIOS.items() if not s.collapses])
def test_healthy_runs_raise_no_alert(name, seed):
    mon, result = _run(name, seed)
    assert result.onset is None, "the healthy scenario itself collapsed"
    assert mon.alerts == [], [str(a) for a in mon.alerts]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", [n for n, s in SCENARIOS.items() if s.collapses])
def test_collapsing_runs_alert_within_one_sampling_interval_of_the_onset(name, seed):
    mon, result = _run(name, seed)
    every = mon.config.every_n_steps
    assert result.onset is not None, "the collapsing scenario did not collapse"
    collapse_alerts = [a for a in mon.alerts if a.rule in COLLAPSE_RULES and a.kind == "collapse"]
    assert collapse_alerts, f"no alert; onset at step {result.onset}"
    detected = collapse_alerts[0].step
    print(f"{name} seed={seed}: onset {result.onset}, detected {detected} ({collapse_alerts[0].rule})")
    assert detected <= result.onset + every
