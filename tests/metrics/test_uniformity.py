import math

import pytest
import torch
from reference_metrics import uniform_loss, uniform_on_sphere, uniformity_closed_form  # noqa: E402

from spherewatch.metrics import uniformity, uniformity_estimate
from spherewatch.metrics.uniformity import EXACT_MAX_ROWS


@pytest.mark.parametrize("n,d,t", [(2, 3, 2.0), (7, 5, 2.0), (300, 16, 2.0), (513, 64, 1.0), (1000, 128, 5.0)])
def test_uniformity_matches_pdist_reference(n, d, t):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n)) * 3 + 0.5
    assert uniformity(x, t).item() == pytest.approx(uniform_loss(x, t), rel=1e-5)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000, 5000])
def test_uniformity_does_not_depend_on_block_size(block_size):
    x = torch.randn(1000, 32, generator=torch.Generator().manual_seed(1))
    assert uniformity(x, block_size=block_size).item() == pytest.approx(uniform_loss(x), rel=1e-5)


def test_uniformity_excludes_diagonal():
    # With the diagonal (i == j, kernel 1) averaged in, the value is biased upward by log(1/N + (1 - 1/N) m).
    x = uniform_on_sphere(256, 128, seed=3).float()
    value = uniformity(x).item()
    g = x.double() @ x.double().T
    with_diagonal = torch.exp(-2 * (2 - 2 * g)).mean().log().item()
    m = math.exp(value)
    assert with_diagonal == pytest.approx(math.log(1 / 256 + (1 - 1 / 256) * m), rel=1e-6)
    assert with_diagonal > value + 0.1


def test_closed_form_reference_values_from_metrics_md():
    assert uniformity_closed_form(2, 2.0) == pytest.approx(-1.575027, abs=2e-6)
    assert uniformity_closed_form(3, 2.0) == pytest.approx(-2.079777, abs=2e-6)
    d3 = -4.0 + math.log(math.sinh(4.0) / 4.0)
    assert uniformity_closed_form(3, 2.0) == pytest.approx(d3, abs=1e-12)
    # large d: -> -2t + 2t^2/d
    assert uniformity_closed_form(4096, 2.0) == pytest.approx(-4 + 8 / 4096, abs=1e-4)


@pytest.mark.parametrize("d", [2, 3, 8, 32, 128, 1024])
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_uniformity_of_uniform_points_matches_closed_form(d, t):
    n = 2048
    x = uniform_on_sphere(n, d, seed=d)
    value = uniformity(x.float(), t).item()
    # Sampling error: on the uniform sphere the first-order U-statistic term vanishes (rotational symmetry),
    # so var(mean kernel) = 2 var(k) / (N (N - 1)); by the delta method sd(log mean) = sd(mean) / mean.
    k = torch.pdist(x).pow(2).mul(-t).exp()
    sd = math.sqrt(2 * k.var().item() / (n * (n - 1))) / k.mean().item()
    assert abs(value - uniformity_closed_form(d, t)) < 5 * sd + 1e-5  # + fp32 round-off


def test_uniformity_of_regular_tetrahedron_goes_below_the_infinite_sample_optimum():
    tetra = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    assert uniformity(tetra).item() == pytest.approx(-16 / 3, rel=1e-6)
    assert uniformity(tetra).item() < uniformity_closed_form(3, 2.0)


def test_complete_collapse_is_exactly_zero():
    x = torch.randn(1, 16).repeat(100, 1) * torch.rand(100, 1).add(0.5)
    assert uniformity(x).item() == pytest.approx(0.0, abs=1e-6)


def test_collapse_onto_a_circle_reads_as_s1():
    basis = torch.linalg.qr(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)))[0]  # 2 orthonormal columns
    circle = uniform_on_sphere(2048, 2, seed=5)
    x = (circle @ basis.double().T).float()
    k = torch.pdist(circle).pow(2).mul(-2).exp()
    sd = math.sqrt(2 * k.var().item() / (2048 * 2047)) / k.mean().item()
    assert abs(uniformity(x).item() - uniformity_closed_form(2, 2.0)) < 5 * sd + 1e-5


def test_uniformity_is_invariant_to_rotation_scaling_and_permutation():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(400, 24, generator=g)
    q = torch.linalg.qr(torch.randn(24, 24, generator=g))[0]
    ref = uniformity(x).item()
    assert uniformity(x @ q).item() == pytest.approx(ref, rel=1e-5)
    assert uniformity(x * torch.rand(400, 1, generator=g).add(0.01) * 100).item() == pytest.approx(ref, rel=1e-5)
    assert uniformity(x[torch.randperm(400, generator=g)]).item() == pytest.approx(ref, rel=1e-5)


def test_zero_rows_do_not_produce_nan():
    x = torch.randn(50, 8)
    x[3] = 0
    x[10] = 0
    value = uniformity(x)
    assert torch.isfinite(value)
    # a zero row sits at the origin: ||0 - z||^2 = 1 for every unit z; matches the reference on the same rows
    assert value.item() == pytest.approx(uniform_loss(x), rel=1e-5)


def test_large_t_does_not_overflow():
    x = torch.randn(200, 4)
    assert torch.isfinite(uniformity(x, t=40.0))


def test_pooled_estimator_is_exact_with_a_single_chunk():
    x = torch.randn(500, 16)
    est = uniformity_estimate(x, chunk_size=500)
    assert est.value.item() == pytest.approx(uniform_loss(x), rel=1e-5)
    assert est.stderr.item() == 0.0


def test_pooled_estimator_agrees_with_exact_within_its_standard_error():
    # anisotropic data (1/sqrt(N) regime): the estimate must fall within a few reported stderr of the exact value
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12000, 32, generator=g) * torch.linspace(0.2, 3, 32) + 0.3
    exact = uniformity(x, method="exact").item()
    errors = []
    for seed in range(5):
        est = uniformity_estimate(x, chunk_size=1000, seed=seed)
        assert est.stderr.item() > 0
        errors.append((est.value.item() - exact) / est.stderr.item())
    assert max(abs(e) for e in errors) < 4.5
    # the reported stderr is the right size: not orders of magnitude too large
    assert sum(e * e for e in errors) / len(errors) > 0.01


def test_auto_method_switches_to_the_estimator_above_the_exact_limit():
    n = EXACT_MAX_ROWS + 100
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    auto = uniformity(x, chunk_size=4096, seed=1).item()
    pooled = uniformity_estimate(x, chunk_size=4096, seed=1).value.item()
    assert auto == pooled


def test_uniformity_is_differentiable():
    x = torch.randn(64, 8, requires_grad=True)
    uniformity(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    ref = x.detach().clone().requires_grad_(True)
    torch.pdist(torch.nn.functional.normalize(ref, dim=1)).pow(2).mul(-2).exp().mean().log().backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_t_is_rejected_with_its_value(bad):
    with pytest.raises(ValueError, match=r"`t`.*" + ("nan" if bad != bad else "")):
        uniformity(torch.randn(4, 3), t=bad)


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="'auto', 'exact', 'pooled'"):
        uniformity(torch.randn(4, 3), method="fast")


def test_bad_chunk_and_block_sizes_are_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        uniformity_estimate(torch.randn(4, 3), chunk_size=1)
    with pytest.raises(ValueError, match="block_size"):
        uniformity(torch.randn(4, 3), block_size=0)
