"""The metric catalogue is the one source of the metric tables, and an evaluation that shares its work gives the
values of the public metric functions."""
import pytest
import torch

import spherewatch.catalogue as catalogue
import spherewatch.metrics as M
from spherewatch.catalogue import MetricSpec, metric_specs, spec
from spherewatch.compute import DERIVED_KEYS, STDERR_METRICS, compute_tap_metrics
from spherewatch.config import METRICS, PRESETS, SPECTRAL_METRICS, known_metric_keys
from spherewatch.keys import CATALOGUE, info
from spherewatch.metrics._linalg import rows_eigvalsh64
from spherewatch.metrics._shared import shared_work
from spherewatch.metrics._validation import normalize_rows
from spherewatch.metrics.stderr import block_stderr


def test_the_tables_are_read_from_the_catalogue():
    assert METRICS == tuple(s.name for s in metric_specs())
    assert SPECTRAL_METRICS == {s.name for s in metric_specs() if s.spectral}
    for name, metrics in PRESETS.items():
        assert metrics == tuple(s.name for s in metric_specs() if name in s.presets)
    assert PRESETS["full"] == METRICS
    assert DERIVED_KEYS == {"norm_stats": spec("norm_stats").derived, "alpha_req": ("alpha_req_r2",)}
    assert STDERR_METRICS == {s.name: s.stderr_blocks for s in catalogue.SPECS if s.stderr is not None}
    assert {i.metric for i in CATALOGUE} == {s.name for s in catalogue.SPECS if s.title is not None}
    assert info("uniformity").title == spec("uniformity").title and info("norm_stats") is None
    for s in metric_specs():
        assert s.evaluate is not None and s.function is not None, s.name
        assert s.worse in (None, "rise", "fall") and s.advice in (None, "spread", "rank")
        assert s.source is None or spec(s.source) is not None
    assert set(known_metric_keys()) >= {"zero_norm_fraction", "alpha_req_r2", "uniformity_stderr"}


def test_hints_fall_back_to_the_generic_one():
    assert catalogue.hint("uniformity_pos") == catalogue.hint("uniformity")
    assert catalogue.hint("no_such_metric") == catalogue.GENERIC_HINT
    assert catalogue.collapsed_at_top() >= {"uniformity", "mean_cosine"}
    assert "effective_rank" not in catalogue.collapsed_at_top()


def test_a_new_metric_is_its_function_and_its_spec(monkeypatch):
    extra = MetricSpec("mean_abs", "mean |x|", catalogue.HEALTH, 999, function=torch.mean,
                       evaluate=lambda tap: tap.u.abs().mean())
    monkeypatch.setattr(catalogue, "SPECS", catalogue.SPECS + (extra,))
    z = torch.randn(64, 8)
    sc, _ = compute_tap_metrics(z, None, None, ["mean_abs", "uniformity"], spectral=False)
    assert float(sc["mean_abs"]) == pytest.approx(float(normalize_rows(z).abs().mean()))
    assert "uniformity" in sc


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [203, 640])
def test_a_shared_evaluation_gives_the_public_functions_values(dtype, n):
    g = torch.Generator().manual_seed(n)
    z = (torch.randn(n, 24, generator=g) * torch.linspace(1, 0.05, 24)).to(dtype)
    zp = z + 0.1 * torch.randn(n, 24, generator=g).to(dtype)
    sc, hi = compute_tap_metrics(z, zp, None, METRICS, spectral=True)
    x, y = z.float(), zp.float()
    expected = {
        "uniformity": M.uniformity(x), "uniformity_pos": M.uniformity(y), "alignment": M.alignment(x, y),
        "mean_cosine": M.mean_cosine(x), "normalized_std": M.normalized_std(x), "dead_dimensions": M.dead_dimensions(x),
        "effective_rank": M.effective_rank(x), "effective_rank_centered": M.effective_rank(x, center=True),
        "nonfinite_fraction": M.nonfinite_fraction(z), "lidar": M.lidar(torch.stack([x, y], dim=1)),
    }
    for key, value in expected.items():
        assert float(sc[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), key
    assert torch.allclose(hi["spectrum"], M.spectrum(x), rtol=1e-5, atol=1e-9)
    for key, fn in (("uniformity", M.uniformity), ("mean_cosine", M.mean_cosine),
                    ("normalized_std", M.normalized_std)):
        assert float(sc[f"{key}_stderr"]) == pytest.approx(float(block_stderr(fn, x, blocks=8)), rel=1e-3), key
    se = block_stderr(M.alignment, x, y, blocks=8)
    assert float(sc["alignment_stderr"]) == pytest.approx(float(se), rel=1e-3)


def test_shared_work_reuses_within_the_scope_only():
    x = torch.randn(300, 16)
    with shared_work():
        assert normalize_rows(x) is normalize_rows(x)
        inside = rows_eigvalsh64(x, normalize=True, center=False)
        assert rows_eigvalsh64(x, normalize=True, center=False) is inside
    outside = rows_eigvalsh64(x, normalize=True, center=False)
    assert normalize_rows(x) is not normalize_rows(x)
    assert torch.allclose(inside, outside, rtol=1e-10, atol=1e-12)
