import numpy as np
import pytest
import torch
from reference_metrics import align_loss, nc1_fp64, nc1_numpy

from spherewatch.metrics import alignment, nc1


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_matches_reference(alpha):
    x, y = torch.randn(50, 7), torch.randn(50, 7)
    assert alignment(x, y, alpha).item() == pytest.approx(align_loss(x, y, alpha), rel=1e-5)


def test_alignment_known_values():
    x = torch.randn(100, 16)
    assert alignment(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment(x, -x).item() == pytest.approx(4.0, rel=1e-6)
    unrelated = alignment(torch.randn(20000, 64), torch.randn(20000, 64)).item()
    assert unrelated == pytest.approx(2.0, abs=0.02)


def test_nc1_matches_numpy_reference():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (200,), generator=g)
    x = torch.randn(200, 12, generator=g) + torch.randn(5, 12, generator=g)[labels] * 2
    ref = nc1_numpy(x.double().numpy(), labels.numpy())
    assert nc1(x, labels).item() == pytest.approx(ref, rel=1e-4)
    assert nc1(x, labels, num_classes=5).item() == pytest.approx(ref, rel=1e-4)


def test_nc1_ignores_absent_classes():
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 2, 2, 0, 5, 5, 0, 2, 5] * 10)
    x = torch.randn(90, 6, generator=g)
    ref = nc1_numpy(x.double().numpy(), labels.numpy())
    assert nc1(x, labels, num_classes=8).item() == pytest.approx(ref, rel=1e-4)


def test_nc1_is_zero_for_collapsed_classes_and_large_for_overlap():
    x = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    assert nc1(x, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(2)
    mixed = nc1(torch.randn(400, 8, generator=g), torch.randint(0, 4, (400,), generator=g)).item()
    assert mixed > 10


def test_nc1_bad_labels():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"\(6,\).*\(5,\)"):
        nc1(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer `labels`"):
        nc1(x, torch.zeros(6))
    with pytest.raises(ValueError, match="at least 2 classes"):
        nc1(x, torch.zeros(6, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        nc1(x, np.zeros(6))


def test_nc1_with_nearly_coincident_classes_matches_fp64_formula():
    # two class means 1e-4 apart beside a far third class: fp32 pinv's relative cut dropped the small
    # between-class direction and read 4e-8 ("perfectly separated"); the formula reads 0.267
    g = torch.Generator().manual_seed(0)
    d = 64
    base = torch.nn.functional.normalize(torch.randn(3, d, generator=g, dtype=torch.float64), dim=1)
    base[1] = torch.nn.functional.normalize(base[0] + 1e-4 * torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    labels = torch.arange(600) % 3
    x = (base[labels] + 3e-4 * torch.randn(600, d, generator=g, dtype=torch.float64)).float()
    ref = nc1_fp64(x, labels)
    assert ref == pytest.approx(0.267, abs=1e-3)
    assert nc1(x, labels).item() == pytest.approx(ref, rel=1e-3)
    assert nc1(x, labels, num_classes=3).item() == pytest.approx(ref, rel=1e-3)


def test_nc1_with_imbalanced_classes_matches_fp64_formula():
    g = torch.Generator().manual_seed(1)
    labels = torch.cat([torch.zeros(500), torch.ones(40), torch.full((6,), 2), torch.full((3,), 3)]).long()
    x = torch.randn(len(labels), 32, generator=g) * 0.5 + 2 * torch.randn(4, 32, generator=g)[labels]
    assert nc1(x, labels).item() == pytest.approx(nc1_fp64(x, labels), rel=1e-3)


@pytest.mark.parametrize("c", [5, 40])
def test_nc1_at_d_1024_matches_fp64_formula(c):
    g = torch.Generator().manual_seed(c)
    labels = torch.randint(0, c, (1500,), generator=g)
    means = torch.randn(c, 1024, generator=g) * torch.logspace(0, -3, c).unsqueeze(1)  # spread-out between scales
    x = torch.randn(1500, 1024, generator=g) * 0.05 + means[labels] + 1.0
    assert nc1(x, labels, num_classes=c).item() == pytest.approx(nc1_fp64(x, labels), rel=1e-3)


def test_nc1_with_more_classes_than_dimensions_matches_fp64_formula():
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(400) % 20
    x = torch.randn(400, 8, generator=g) * 0.3 + torch.randn(20, 8, generator=g)[labels]
    assert nc1(x, labels).item() == pytest.approx(nc1_numpy(x.double().numpy(), labels.numpy()), rel=1e-4)
