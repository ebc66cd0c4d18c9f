"""Default rules that know the run's own noise: reference after the transient, thresholds in noise units,
absolute collapse early, a recovering anisotropic start never critical, state through state_dict."""
import json
import math

import torch

from spherewatch.alerts import AlertEngine, CollapseRule, DriftRule, default_rules
from spherewatch.compute import compute_tap_metrics
from spherewatch.metrics import mean_cosine
from spherewatch.metrics.stderr import block_stderr

P = "spherewatch/"


def _feed(engine, rows, every=50):
    out = []
    for i, row in enumerate(rows):
        out += engine.update(i * every, {P + k: v for k, v in row.items()})
    return out


def test_random_init_transient_of_the_rank_is_not_a_degradation():
    # healthy SimCLR: effective rank falls from its random-initialisation peak while the loss falls, then holds
    ranks = [53, 44, 35, 29, 27, 26.6, 26.4, 26.8, 26.5, 26.7, 26.3, 26.6]
    rows = [{"effective_rank": r, "effective_rank_stderr": 0.3, "uniformity": -2.9, "mean_cosine": 0.1} for r in ranks]
    assert _feed(AlertEngine(default_rules()), rows) == []


def test_drift_after_settling_fires_and_names_the_settled_level():
    ranks = [53, 40, 30, 27, 26.8, 27.1, 26.9, 12.0]
    rows = [{"effective_rank": r, "effective_rank_stderr": 0.2} for r in ranks]
    fired = _feed(AlertEngine(default_rules()), rows)
    assert [(a.rule, a.step, a.severity) for a in fired] == [("rank_collapse", 350, "warning")]
    # the message names the reference (the highest rank after the run's first sample) and how far it fell
    assert "from 40 (step 50) to 12 at step 350" in fired[0].message and "fell 3.3x" in fired[0].message


def test_drift_threshold_scales_with_the_logged_standard_error():
    rule = DriftRule(metric="m", direction="fall", collapsed=0.0, fraction=0.05, z=4.0)
    base = [10.0, 10.1, 9.9, 10.0, 10.05]
    # a drop of 1.0 is 10% of the way to collapse: beyond `fraction`; it fires when the noise is small ...
    quiet = _feed(AlertEngine([rule]), [{"m": v, "m_stderr": 0.01} for v in base + [9.0]])
    assert [a.step for a in quiet] == [250]
    # ... and not when the sampling error at the rows used says a change of 1.0 is noise
    noisy = _feed(AlertEngine([rule]), [{"m": v, "m_stderr": 0.5} for v in base + [9.0]])
    assert noisy == []


def test_transformer_start_that_recovers_is_never_alerted():
    # mean-pooled transformer at step 1: anisotropic (mean cosine 0.94), then recovering to uniformity -3.1
    mc = [0.94, 0.55, 0.25, 0.12, 0.08, 0.07, 0.07]
    uni = [-0.24, -1.6, -2.6, -3.0, -3.1, -3.1, -3.08]
    rows = [{"mean_cosine": c, "mean_cosine_stderr": 0.002, "uniformity": u, "uniformity_stderr": 0.01,
             "normalized_std": 0.02 + 0.1 * (1 - c), "effective_rank": 2 + 20 * (1 - c)} for c, u in zip(mc, uni)]
    assert _feed(AlertEngine(default_rules()), rows) == []


def test_a_slow_but_significant_recovery_from_the_start_is_not_alerted():
    rows = [{"mean_cosine": c, "mean_cosine_stderr": 0.001} for c in (0.95, 0.935, 0.92, 0.9, 0.7)]
    assert _feed(AlertEngine(default_rules()), rows) == []


def test_complete_collapse_warns_at_once_and_is_critical_when_it_persists():
    mc = [0.3, 0.2, 0.98, 0.99, 0.99]
    uni = [-2.5, -3.0, -0.05, -0.03, -0.03]
    rows = [{"mean_cosine": c, "uniformity": u, "uniformity_stderr": 0.002} for c, u in zip(mc, uni)]
    fired = _feed(AlertEngine(default_rules()), rows)
    got = [(a.rule, a.step, a.severity) for a in fired if a.rule.endswith("_collapse")]
    assert got == [("mean_cosine_collapse", 100, "warning"), ("uniformity_collapse", 150, "critical")]
    assert min(a.step for a in fired if a.severity == "critical") == 150


def test_a_run_that_arrives_collapsed_is_caught_on_its_second_and_third_samples():
    rows = [{"mean_cosine": 0.99, "uniformity": -0.02}] * 3
    fired = _feed(AlertEngine(default_rules()), rows)
    assert [(a.rule, a.step) for a in fired] == [("mean_cosine_collapse", 50), ("uniformity_collapse", 100)]


def test_relative_collapse_zone_follows_the_runs_own_peak():
    rule = CollapseRule(metric="normalized_std", collapsed=0.0, margin=0.1, relative=True, patience=1)
    fired = _feed(AlertEngine([rule]), [{"normalized_std": v} for v in (0.02, 0.09, 0.12, 0.11, 0.005)])
    assert [a.step for a in fired] == [200]


def test_noise_aware_state_survives_state_dict_round_trip_through_json():
    rows = [{"effective_rank": r, "effective_rank_stderr": 0.2, "mean_cosine": 0.95} for r in (53, 40, 30, 27, 26.8)]
    a = AlertEngine(default_rules())
    _feed(a, rows)
    b = AlertEngine(default_rules())
    b.load_state_dict(json.loads(json.dumps(a.state_dict(), allow_nan=False)))
    tail = {P + "effective_rank": 10.0, P + "effective_rank_stderr": 0.2, P + "mean_cosine": 0.95}
    assert [x.rule for x in a.update(500, tail)] == [x.rule for x in b.update(500, tail)] != []
    # state saved before these fields existed loads with defaults
    old = a.state_dict()
    for states in old["states"].values():
        for st in states.values():
            st.pop("ev")
    AlertEngine(default_rules()).load_state_dict(old)


def test_block_stderr_matches_the_spread_over_independent_samples():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(32, 24, generator=g)
    draws = [torch.relu(torch.randn(1024, 32, generator=g)) @ mix for _ in range(40)]
    spread = torch.stack([mean_cosine(z) for z in draws]).std().item()
    se = torch.stack([block_stderr(mean_cosine, z) for z in draws]).mean().item()
    assert 0.5 < se / spread < 2.0, (se, spread)


def test_rows_and_stderr_are_logged_beside_the_metrics():
    z = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    scalars, _ = compute_tap_metrics(z, z + 0.1, None, ("uniformity", "effective_rank", "mean_cosine", "alignment"),
                                     spectral=True)
    assert float(scalars["rows"]) == 256
    for name in ("uniformity", "effective_rank", "mean_cosine", "alignment"):
        assert math.isfinite(float(scalars[f"{name}_stderr"])) and float(scalars[f"{name}_stderr"]) >= 0
    few, _ = compute_tap_metrics(z[:8], None, None, ("uniformity",), spectral=False)
    assert "uniformity_stderr" not in few and float(few["rows"]) == 8


def test_a_drift_that_persists_escalates_to_critical_at_the_third_evaluation():
    # critical once the collapse is real: the rank fell 4x (40 -> 10) on two evaluations in a row; a rank that
    # fell to 12 and holds there stays a warning
    ranks = [53, 40, 30, 27, 26.8, 27.1, 26.9, 12.0, 6.5, 6.2]
    rows = [{"effective_rank": r, "effective_rank_stderr": 0.2} for r in ranks]
    fired = _feed(AlertEngine(default_rules()), rows)
    assert [(a.rule, a.step, a.severity) for a in fired] == [
        ("rank_collapse", 350, "warning"), ("rank_collapse_persists", 450, "critical")]
    held = [53, 40, 30, 27, 26.8, 27.1, 26.9, 12.0, 11.5, 11.8]
    fired = _feed(AlertEngine(default_rules()), [{"effective_rank": r, "effective_rank_stderr": 0.2} for r in held])
    assert [(a.rule, a.severity) for a in fired] == [("rank_collapse", "warning")]
