import math

import pytest
import torch
from reference_metrics import rankme

from spherewatch.metrics import effective_rank, effective_rank_from_gram


@pytest.mark.parametrize("n,d", [(2, 5), (64, 128), (128, 128), (300, 64), (4096, 128), (1000, 512)])
@pytest.mark.parametrize("center", [False, True])
def test_effective_rank_matches_svdvals_reference(n, d, center):
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.1, 2.0, d) + 0.2
    assert effective_rank(x, center=center).item() == pytest.approx(rankme(x, center=center), rel=1e-5)


@pytest.mark.parametrize("n,d,k", [(4096, 128, 10), (4096, 512, 5), (8192, 512, 64), (100, 256, 7)])
def test_gram_and_svd_routes_agree_on_low_rank_data(n, d, k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(n, k, generator=g) @ torch.randn(k, d, generator=g)
    assert effective_rank(x).item() == pytest.approx(rankme(x), rel=1e-4)


def test_known_values_from_metrics_md():
    assert effective_rank(torch.eye(128)).item() == pytest.approx(128.0, rel=1e-6)
    diag = torch.diag(torch.tensor([3.0, 1.0]))
    p = torch.tensor([0.75, 0.25])
    assert effective_rank(diag, normalize=False).item() == pytest.approx(1.754765, abs=1e-6)
    assert effective_rank(diag, normalize=False).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    # identical rows: 1 within the issue-10 tolerance for exact rank k (1e-3 * k). No numerical-rank cut: the
    # round-off singular values (~eps32 * sigma_max from fp32 svdvals, the CPU route at this size; ~1e-8 * sigma_max
    # from the fp64 Gram) read 1.00001, and a cut would drop real tails (METRICS.md "Precision")
    assert effective_rank(torch.randn(1, 32).repeat(500, 1)).item() == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.randn(1, 32).double().repeat(500, 1)).item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("k", [1, 4, 16])
def test_rank_k_isotropic_data_reads_about_k(k):
    g = torch.Generator().manual_seed(k)
    basis = torch.linalg.qr(torch.randn(128, k, generator=g))[0]
    x = torch.randn(8192, k, generator=g) @ basis.T
    value = effective_rank(x).item()
    # isotropic in the subspace: singular values equal up to O(sqrt(k/N)) fluctuations. Above k only round-off:
    # fp32 svdvals (the CPU route here) leaves 128 - k singular values near eps32 * sigma_max, whose entropy reads
    # up to ~2e-4 * k above k depending on the BLAS (1.0001 on CI's machine for k = 1): the issue-10 tolerance
    # for exact rank k, 1e-3 * k, bounds it
    assert k * (1 - 4 * k / 8192) - 1e-4 <= value <= k * (1 + 1e-3)


def test_common_offset_crushes_uncentred_rank_but_not_centred():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 128, generator=g) + 10
    assert effective_rank(x, normalize=False).item() == pytest.approx(25.7, abs=0.3)
    assert effective_rank(x, normalize=False, center=True).item() == pytest.approx(127.5, abs=0.3)


@pytest.mark.parametrize("ratio,expected", [(1, 103.0), (4, 124.0), (32, 127.5)])
def test_marchenko_pastur_bias_at_small_n(ratio, expected):
    g = torch.Generator().manual_seed(ratio)
    x = torch.randn(128 * ratio, 128, generator=g)
    assert effective_rank(x, normalize=False).item() == pytest.approx(expected, abs=1.0)


def test_all_zero_input_gives_one_not_nan():
    assert effective_rank(torch.zeros(10, 4)).item() == 1.0
    assert effective_rank(torch.zeros(3, 40)).item() == 1.0
    assert effective_rank_from_gram(torch.zeros(4, 4)).item() == 1.0


def test_effective_rank_from_gram_streams_across_batches():
    g = torch.Generator().manual_seed(3)
    batches = [torch.nn.functional.normalize(torch.randn(500, 64, generator=g), dim=1) for _ in range(4)]
    gram = sum(b.T @ b for b in batches)
    assert effective_rank_from_gram(gram).item() == pytest.approx(effective_rank(torch.cat(batches)).item(), rel=1e-5)


def test_effective_rank_is_invariant_to_rotation_scaling_and_permutation():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(600, 32, generator=g) * torch.linspace(0.1, 1, 32)
    q = torch.linalg.qr(torch.randn(32, 32, generator=g))[0]
    ref = effective_rank(x).item()
    assert effective_rank(x @ q).item() == pytest.approx(ref, rel=1e-5)
    assert effective_rank(x * torch.rand(600, 1, generator=g).add(0.1) * 50).item() == pytest.approx(ref, rel=1e-5)
    assert effective_rank(x[torch.randperm(600, generator=g)]).item() == pytest.approx(ref, rel=1e-5)


def test_bad_gram_shape_is_rejected():
    with pytest.raises(ValueError, match=r"square \(D, D\).*\(3, 4\)"):
        effective_rank_from_gram(torch.zeros(3, 4))
