"""``redundancy``: the mean squared off-diagonal cross-correlation of two views (Barlow Twins' redundancy term),
against the paper's own recipe in fp64 and against closed forms, with tolerances from the sampling error."""
import math

import pytest
import torch
from reference_metrics import barlow_redundancy

import spherewatch as sw
from spherewatch.metrics import redundancy


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n,d", [(7, 3), (50, 200), (300, 40), (64, 64)])
def test_matches_the_barlow_twins_recipe_in_fp64_on_both_paths(n, d):
    # n < d goes through the two N x N Grams, n >= d through the D x D cross-correlation
    g = _gen(n * d)
    x = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 3.0
    y = x + 0.7 * torch.randn(n, d, generator=g)
    assert redundancy(x, y).item() == pytest.approx(barlow_redundancy(x, y), rel=2e-5)
    assert redundancy(x.double(), y.double()).item() == pytest.approx(barlow_redundancy(x, y), rel=1e-10)


@pytest.mark.parametrize("n,d", [(512, 4096), (4096, 1024)])
def test_fp32_and_bf16_at_real_widths_match_fp64(n, d):
    g = _gen(d)
    base = torch.randn(n, 32, generator=g) @ torch.randn(32, d, generator=g)  # correlated features, like a projector
    x = base + torch.randn(n, d, generator=g)
    y = base + torch.randn(n, d, generator=g)
    ref = redundancy(x.double(), y.double()).item()
    assert redundancy(x, y).item() == pytest.approx(ref, rel=1e-4)
    xb, yb = x.bfloat16(), y.bfloat16()
    assert redundancy(xb, yb).dtype == torch.float32
    assert redundancy(xb, yb).item() == pytest.approx(redundancy(xb.double(), yb.double()).item(), rel=1e-4)


@pytest.mark.parametrize("n,d", [(200, 64), (40, 300)])
def test_independent_features_sit_at_the_sampling_floor(n, d):
    # independent Gaussian columns: every squared sample correlation has mean 1/(N-1) and variance
    # 2(N-2)/((N-1)^2 (N+1)); the D(D-1) cross-view entries are pairwise independent
    x, y = torch.randn(n, d, generator=_gen(1)), torch.randn(n, d, generator=_gen(2))
    se = math.sqrt(2 * (n - 2) / ((n - 1) ** 2 * (n + 1)) / (d * (d - 1)))
    assert redundancy(x, y).item() == pytest.approx(1 / (n - 1), abs=5 * se)
    # the same view twice: C is symmetric, each entry counted twice
    assert redundancy(x, x).item() == pytest.approx(1 / (n - 1), abs=5 * math.sqrt(2) * se)


def test_equicorrelated_features_read_rho_squared():
    # x_i = sqrt(rho) f + sqrt(1 - rho) e_i: every pair correlates rho; E[r^2] = rho^2 + (1 - rho^2)^2 / N (to
    # first order); the entries share f, so the error of their mean is that of one r^2: 2 rho (1 - rho^2) / sqrt(N)
    n, d, rho = 100_000, 8, 0.5
    g = _gen(3)
    x = math.sqrt(rho) * torch.randn(n, 1, generator=g, dtype=torch.float64) \
        + math.sqrt(1 - rho) * torch.randn(n, d, generator=g, dtype=torch.float64)
    expected = rho ** 2 + (1 - rho ** 2) ** 2 / n
    assert redundancy(x, x).item() == pytest.approx(expected, abs=5 * 2 * rho * (1 - rho ** 2) / math.sqrt(n))


def test_collapsed_features_read_one():
    f = torch.randn(100, 1, generator=_gen(4))
    copies = f * torch.tensor([[1.0, -2.0, 0.5, 3.0]]) + torch.tensor([[1.0, 0.0, -4.0, 2.0]])
    assert redundancy(copies, copies).item() == pytest.approx(1.0, abs=1e-5)
    assert redundancy(torch.ones(10, 5), torch.ones(10, 5)).item() == 1.0  # nothing varies: completely collapsed
    # one point repeated: the computed deviations are the rounding of its mean, not features
    point = torch.randn(1, 64, generator=_gen(9)).expand(300, 64).clone()
    assert redundancy(point, point).item() == 1.0


def test_invariant_to_column_scale_shift_row_order_and_view_order():
    g = _gen(5)
    x = torch.randn(80, 12, generator=g) @ torch.randn(12, 12, generator=g)
    y = x + torch.randn(80, 12, generator=g)
    v = redundancy(x, y).item()
    scale, shift = torch.rand(12, generator=g) + 0.1, torch.randn(12, generator=g)
    perm = torch.randperm(80, generator=g)
    assert redundancy(x * scale + shift, y * scale - shift).item() == pytest.approx(v, rel=1e-5)
    assert redundancy(x[perm], y[perm]).item() == pytest.approx(v, rel=1e-5)
    assert redundancy(y, x).item() == pytest.approx(v, rel=1e-5)


def test_a_dead_column_is_left_out_and_a_nonfinite_entry_gives_nan():
    g = _gen(6)
    x = torch.randn(60, 6, generator=g) @ torch.randn(6, 6, generator=g)
    y = x + torch.randn(60, 6, generator=g)
    dead = torch.full((60, 1), 2.5)
    assert redundancy(torch.cat([x, dead], 1), torch.cat([y, dead], 1)).item() == \
        pytest.approx(redundancy(x, y).item(), rel=1e-5)
    bad = x.clone()
    bad[3, 2] = float("nan")
    assert math.isnan(redundancy(bad, y).item())


def test_bad_input_names_the_value_and_the_fix():
    with pytest.raises(ValueError, match="same shape"):
        redundancy(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        redundancy(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="at least 2 columns"):
        redundancy(torch.randn(5, 1), torch.randn(5, 1))


def test_the_monitor_logs_it_for_paired_taps_only():
    g = _gen(7)
    mon = sw.Monitor(sinks=("memory",), warn=False, every_n_steps=1)
    z1 = torch.randn(64, 16, generator=g)
    z2 = z1 + 0.5 * torch.randn(64, 16, generator=g)
    mon.observe(z1, z2)
    mon.step(1)
    mon.observe(z1)
    mon.step(2)
    mon.close()
    logged = mon.sink("memory").history("spherewatch/redundancy")
    assert [s for s, _ in logged] == [1]  # step 2 had no paired view
    assert logged[0][1] == pytest.approx(redundancy(z1, z2).item(), rel=1e-5)


def test_from_moments_equals_the_rows_value_with_a_large_offset_and_a_dead_column():
    from spherewatch.metrics import redundancy_from_moments

    g = _gen(8)
    x = (torch.randn(900, 10, generator=g, dtype=torch.float64) @ torch.randn(10, 10, generator=g, dtype=torch.float64)
         + 1e3)  # a large offset: the centred merge keeps every digit
    y = x + torch.randn(900, 10, generator=g, dtype=torch.float64)
    y[:, 3] = 7.0  # a dead column, left out as by redundancy()
    xc, yc = x - x.mean(0), y - y.mean(0)
    whole = redundancy_from_moments(xc.T @ yc, (xc * xc).sum(0), (yc * yc).sum(0), 900, x.mean(0), y.mean(0))
    assert whole.item() == pytest.approx(redundancy(x, y).item(), rel=1e-10)
    with pytest.raises(ValueError, match="co-moment"):
        redundancy_from_moments(torch.zeros(3, 3), torch.zeros(3), torch.zeros(4), 5, torch.zeros(3), torch.zeros(3))
