import math

import pytest
import torch
import torch.nn.functional as F
from reference_metrics import normalized64

from spherewatch.metrics import dead_dimensions, mean_cosine, nonfinite_fraction, norm_stats, normalized_std


def test_normalized_std_matches_loop_reference():
    x = torch.randn(37, 9) + 0.3
    z = normalized64(x)
    ref = sum(z[:, k].std(unbiased=True).item() for k in range(9)) / 9
    assert normalized_std(x).item() == pytest.approx(ref, rel=1e-5)


def test_normalized_std_reads_one_over_sqrt_d_when_isotropic_and_zero_when_collapsed():
    x = torch.randn(20000, 64, generator=torch.Generator().manual_seed(0))
    assert normalized_std(x).item() == pytest.approx(1 / math.sqrt(64), rel=0.01)
    assert normalized_std(torch.randn(1, 64).repeat(10, 1) * torch.arange(1, 11).unsqueeze(1)).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_mean_cosine_matches_pairwise_loop():
    x = torch.randn(25, 6)
    z = normalized64(x)
    total = sum((z[i] @ z[j]).item() for i in range(25) for j in range(25) if i != j)
    assert mean_cosine(x).item() == pytest.approx(total / (25 * 24), rel=1e-5, abs=1e-7)


def test_mean_cosine_known_values():
    assert mean_cosine(torch.ones(5, 3)).item() == pytest.approx(1.0, abs=1e-6)
    x = torch.randn(20000, 32, generator=torch.Generator().manual_seed(1))
    # isotropic: mean of i != j cosines has sd ~ 1 / (N sqrt(D)) around 0
    assert abs(mean_cosine(x).item()) < 5 * math.sqrt(2 / 32) / 20000
    relu = F.relu(torch.randn(20000, 512, generator=torch.Generator().manual_seed(2)))
    assert mean_cosine(relu).item() == pytest.approx(1 / math.pi * 1.0, abs=0.02)  # E[cos] of ReLU(gauss) = 1/pi


def test_mean_cosine_with_zero_rows_averages_them_as_zero_similarity():
    x = torch.ones(4, 3)
    x[0] = 0
    # 6 of the 12 ordered pairs are between the 3 unit rows (cos 1), the rest involve the zero row (cos 0)
    assert mean_cosine(x).item() == pytest.approx(0.5, rel=1e-6)


def test_dead_dimensions_fraction():
    x = torch.randn(100, 8)
    x[:, 2] = 0
    x[:, 5] = 0
    assert dead_dimensions(x).item() == pytest.approx(0.25)
    assert dead_dimensions(torch.ones(7, 4)).item() == 1.0


def test_nonfinite_fraction_counts_entries():
    x = torch.zeros(4, 5)
    x[0, 0] = float("nan")
    x[1, 2] = float("inf")
    x[3, 4] = -float("inf")
    assert nonfinite_fraction(x).item() == pytest.approx(3 / 20)
    assert nonfinite_fraction(torch.randn(1, 3)).item() == 0.0


def test_norm_stats_match_manual_and_skip_nonfinite_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0], [float("nan"), 1.0], [6.0, 8.0]])
    s = {k: v.item() for k, v in norm_stats(x).items()}
    ref = torch.tensor([5.0, 1.0, 10.0])
    assert s["norm_mean"] == pytest.approx(ref.mean().item())
    assert s["norm_std"] == pytest.approx(ref.std().item())
    assert (s["norm_min"], s["norm_max"]) == (1.0, 10.0)
