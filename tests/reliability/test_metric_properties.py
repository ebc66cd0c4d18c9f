"""Property-based invariants of the metrics (hypothesis): what a rotation of the embedding space, a positive rescaling
of rows and a reordering of rows may and may not change, and the documented ranges.

Every metric normalises rows first, so row scaling never matters. Rotations (``x @ Q``, ``Q`` orthogonal) keep
all inner products: uniformity, effective rank, mean cosine and alignment (both views rotated together) keep their
value; normalized_std is a per-axis statistic and does not. Row order never matters (paired rows move together).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spherewatch.metrics as M

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = {"rel": 2e-4, "abs": 2e-4}  # fp32 arithmetic inside the metrics


@st.composite
def batches(draw, min_rows=2, paired=False):
    """``(x, y, g)``: an ``(N, D)`` fp32 batch of one of several shapes of data (isotropic, low rank, a large common
    offset, tight clusters), its paired view (or None) and a generator for the transformations."""
    n = draw(st.integers(min_rows, 24))
    d = draw(st.integers(2, 10))
    kind = draw(st.sampled_from(["isotropic", "low rank", "offset", "clusters"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "low rank":
        k = draw(st.integers(1, d))
        x = torch.randn(n, k, generator=g, dtype=torch.float64) @ torch.randn(k, d, generator=g, dtype=torch.float64)
    elif kind == "offset":
        x = x + 5.0 * torch.randn(1, d, generator=g, dtype=torch.float64)
    elif kind == "clusters":
        centres = torch.randn(3, d, generator=g, dtype=torch.float64)
        x = centres[torch.randint(0, 3, (n,), generator=g)] + 0.05 * x
    y = x + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) if paired else None
    return x.float(), (None if y is None else y.float()), g


def _rotation(d, g):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # Haar-distributed orthogonal matrix


def _row_scales(n, g):
    return (0.1 + 9.9 * torch.rand(n, 1, generator=g, dtype=torch.float64)).float()  # positive, 0.1 .. 10


def _same(a, b):
    assert float(a) == pytest.approx(float(b), **TOL)


@SETTINGS
@given(batches())
def test_uniformity_ignores_rotation_row_scaling_and_row_order(batch):
    x, _, g = batch
    n, d = x.shape
    base = M.uniformity(x)
    _same(M.uniformity(x @ _rotation(d, g)), base)
    _same(M.uniformity(x * _row_scales(n, g)), base)
    _same(M.uniformity(x[torch.randperm(n, generator=g)]), base)
    assert -4 * 2.0 - 1e-4 <= float(base) <= 1e-4  # log of a mean of exp(-t ||.||^2), ||.||^2 in [0, 4], t = 2


@SETTINGS
@given(batches())
def test_effective_rank_ignores_rotation_row_scaling_and_row_order(batch):
    x, _, g = batch
    n, d = x.shape
    base = M.effective_rank(x)
    _same(M.effective_rank(x @ _rotation(d, g)), base)
    _same(M.effective_rank(x * _row_scales(n, g)), base)
    _same(M.effective_rank(x[torch.randperm(n, generator=g)]), base)
    assert 1 - 1e-4 <= float(base) <= min(n, d) + 1e-3


@SETTINGS
@given(batches(), st.floats(0.01, 100.0))
def test_raw_rankme_ignores_rotation_row_order_and_a_global_scale(batch, scale):
    x, _, g = batch
    n, d = x.shape
    base = M.effective_rank(x, normalize=False)
    _same(M.effective_rank(x @ _rotation(d, g), normalize=False), base)
    _same(M.effective_rank(x[torch.randperm(n, generator=g)], normalize=False), base)
    _same(M.effective_rank(x * scale, normalize=False), base)


@SETTINGS
@given(batches())
def test_normalized_std_ignores_row_scaling_and_row_order(batch):
    x, _, g = batch
    n, _ = x.shape
    base = M.normalized_std(x)
    _same(M.normalized_std(x * _row_scales(n, g)), base)
    _same(M.normalized_std(x[torch.randperm(n, generator=g)]), base)
    assert 0 <= float(base) <= 1.0 + 1e-6


def test_normalized_std_is_not_rotation_invariant():
    # two orthogonal unit rows along the axes, then rotated by 45 degrees: same geometry, different per-axis spread
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = math.sqrt(0.5)
    rotated = x @ torch.tensor([[c, -c], [c, c]])
    assert float(M.normalized_std(x)) == pytest.approx(c)
    assert float(M.normalized_std(rotated)) == pytest.approx(0.5)
    assert float(M.uniformity(rotated)) == pytest.approx(float(M.uniformity(x)))


@SETTINGS
@given(batches())
def test_mean_cosine_ignores_rotation_row_scaling_and_row_order(batch):
    x, _, g = batch
    n, d = x.shape
    base = M.mean_cosine(x)
    _same(M.mean_cosine(x @ _rotation(d, g)), base)
    _same(M.mean_cosine(x * _row_scales(n, g)), base)
    _same(M.mean_cosine(x[torch.randperm(n, generator=g)]), base)
    assert -1 / (n - 1) - 1e-4 <= float(base) <= 1 + 1e-4


@SETTINGS
@given(batches(paired=True), st.sampled_from([1.0, 2.0, 3.0]))
def test_alignment_ignores_a_shared_rotation_row_scaling_and_paired_row_order(batch, alpha):
    x, y, g = batch
    n, d = x.shape
    base = M.alignment(x, y, alpha)
    q = _rotation(d, g)
    _same(M.alignment(x @ q, y @ q, alpha), base)
    _same(M.alignment(x * _row_scales(n, g), y * _row_scales(n, g), alpha), base)
    perm = torch.randperm(n, generator=g)
    _same(M.alignment(x[perm], y[perm], alpha), base)
    _same(M.alignment(y, x, alpha), base)
    assert -1e-6 <= float(base) <= 2.0 ** alpha + 1e-4  # distances between unit vectors are at most 2
