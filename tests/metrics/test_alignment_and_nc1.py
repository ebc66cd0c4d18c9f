import numpy as np
import pytest
import torch
from reference_metrics import align_loss, nc1_numpy

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
