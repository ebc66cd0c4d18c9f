import math

import numpy as np
import pytest
import torch
from reference_metrics import normalized64

from spherewatch.metrics import alpha_req, collapsed_dimensions, spectrum


def test_spectrum_matches_numpy_covariance_eigenvalues():
    x = torch.randn(300, 20) * torch.linspace(0.1, 3, 20) + 1.0
    ref = np.sort(np.linalg.eigvalsh(np.cov(normalized64(x).numpy(), rowvar=False)))[::-1]
    got = spectrum(x)
    assert got.shape == (20,)
    np.testing.assert_allclose(got.numpy(), np.clip(ref, 0, None), rtol=1e-4, atol=1e-7)
    assert bool((got[:-1] >= got[1:]).all())


def test_isotropic_spectrum_is_flat_at_one_over_d():
    x = torch.randn(64 * 256, 64, generator=torch.Generator().manual_seed(0))
    lam = spectrum(x)
    assert lam.sum().item() == pytest.approx(1.0, rel=1e-3)
    # Marchenko-Pastur edges at (1 +- sqrt(D/N))^2 / D
    r = math.sqrt(64 / (64 * 256))
    assert lam.max().item() < (1 + r) ** 2 / 64 * 1.05
    assert lam.min().item() > (1 - r) ** 2 / 64 * 0.95


def test_collapsed_dimensions_counts_numerically_zero_eigenvalues():
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(32, 32, generator=g))[0][:, :10]
    x = torch.randn(2000, 10, generator=g) @ basis.T  # random (not axis-aligned) 10-dim subspace of 32
    assert collapsed_dimensions(x).item() == 22.0
    assert collapsed_dimensions(torch.randn(2000, 32, generator=g)).item() == 0.0
    assert collapsed_dimensions(spectrum(x)).item() == 22.0


def test_alpha_req_recovers_an_exact_power_law():
    for a in (0.5, 1.0, 2.0):
        lam = torch.arange(1, 257, dtype=torch.float32) ** -a
        out = alpha_req(lam)
        assert out.alpha.item() == pytest.approx(a, rel=1e-4)
        assert out.r2.item() == pytest.approx(1.0, abs=1e-5)


def test_alpha_req_on_data_with_a_power_law_covariance():
    g = torch.Generator().manual_seed(2)
    d = 256
    scales = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5  # eigenvalues ~ i^-1
    x = torch.randn(20 * d, d, generator=g) * scales + 5.0  # offset: normalisation then centring
    out = alpha_req(x)
    assert 0.8 < out.alpha.item() < 1.2
    assert out.r2.item() > 0.95


def test_alpha_req_white_spectrum_is_near_zero_and_small_d_moves_the_window():
    # D=16 < 100: the window becomes ranks 1..16. Sample eigenvalues spread by ~ +-2 sqrt(D/N) = +-0.04 around
    # 1/D (Marchenko-Pastur), i.e. a log-log slope of at most ~0.08 / log(16) = 0.03 in magnitude.
    x = torch.randn(40000, 16, generator=torch.Generator().manual_seed(3))
    out = alpha_req(x)
    assert abs(out.alpha.item()) < 0.06


def test_alpha_req_is_nan_when_the_window_is_collapsed():
    x = torch.randn(1000, 3) @ torch.randn(3, 200)  # rank 3 < window start 11
    assert math.isnan(alpha_req(x).alpha.item())


def test_alpha_req_rejects_a_bad_window():
    with pytest.raises(ValueError, match="window"):
        alpha_req(torch.randn(50, 20), window=(10, 5))
