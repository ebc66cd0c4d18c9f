import pytest
import torch
from reference_metrics import lidar_fp64

from spherewatch.metrics import effective_rank, lidar


def _views(b, v, d, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(b, 1, d, generator=g) * torch.linspace(1.0, 0.05, d)
    return centres + spread * torch.randn(b, v, d, generator=g)


@pytest.mark.parametrize("b,v,d", [(64, 2, 16), (200, 4, 32), (50, 3, 128), (300, 2, 256)])
@pytest.mark.parametrize("normalize", [True, False])
def test_lidar_matches_direct_fp64_implementation(b, v, d, normalize):
    x = _views(b, v, d, seed=b + d)
    assert lidar(x, normalize=normalize).item() == pytest.approx(lidar_fp64(x, normalize=normalize), rel=1e-4)


@pytest.mark.parametrize("b,d", [(64, 16), (20, 64)])
def test_lidar_with_the_reference_epsilon_matches_the_callback_formula(b, d):
    x = _views(b, 2, d, seed=1)
    got = lidar(x, eps=1e-8, normalize=False).item()
    assert got == pytest.approx(lidar_fp64(x, eps=1e-8, normalize=False), rel=1e-4)


def test_lidar_known_answer_k_equal_separated_directions():
    # means +-s e_j (j < k) and views mean +- r e_(i mod D): Sigma_w = (r^2 / 2) I + delta I exactly and Sigma_b
    # has k equal eigenvalues, so the LDA matrix has k equal eigenvalues and LiDAR = k
    d, k, s, r = 8, 4, 1.0, 0.05
    signs = torch.tensor([1.0] * k + [-1.0] * k)
    means = (torch.eye(d)[:k].repeat(2, 1) * signs.unsqueeze(1)).repeat(2, 1) * s  # 16 samples
    noise = torch.eye(d).repeat(2, 1) * r
    views = torch.stack([means + noise, means - noise], dim=1).double()
    assert lidar(views, normalize=False).item() == pytest.approx(k, abs=1e-9)


def test_lidar_of_collapsed_samples_is_one_and_views_only_do_not_count():
    g = torch.Generator().manual_seed(3)
    same = torch.randn(1, 1, 32, generator=g).repeat(100, 1, 1) + 0.1 * torch.randn(100, 2, 32, generator=g)
    # every sample has the same centre: only sampling noise in the means remains, spread over all directions
    # like the within noise, so the LDA spectrum is flat-ish but tiny; fully identical samples read exactly 1
    identical = torch.randn(1, 2, 32, generator=g).repeat(100, 1, 1)
    assert lidar(identical).item() == pytest.approx(1.0)
    assert lidar(identical, eps=1e-8).item() == pytest.approx(32.0, rel=1e-3)  # the reference's epsilon quirk
    assert lidar(same).item() > 1.0


def test_lidar_ignores_what_augmentations_spread_and_rankme_does_not():
    # embeddings that vary a lot between views along many directions but separate samples along 3 only
    g = torch.Generator().manual_seed(4)
    basis = torch.linalg.qr(torch.randn(64, 64, generator=g))[0]
    centres = 3 * torch.randn(400, 1, 3, generator=g) @ basis[:, :3].T
    views = centres + 0.3 * torch.randn(400, 8, 64, generator=g)
    # noise directions: between/within ~ 1/V each (the means keep 1/V of the view noise), signal ones ~ 100
    assert lidar(views, normalize=False).item() < 5
    assert effective_rank(views[:, 0], normalize=False).item() > 20


def test_lidar_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"\(B, V, D\).*\(8, 4\)"):
        lidar(torch.randn(8, 4))
    with pytest.raises(ValueError, match="at least 2 views"):
        lidar(torch.randn(8, 1, 4))
    with pytest.raises(TypeError, match="floating"):
        lidar(torch.ones(8, 2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="delta"):
        lidar(torch.randn(8, 2, 4), delta=0)
