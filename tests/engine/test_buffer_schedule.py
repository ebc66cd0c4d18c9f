import math
from collections import Counter

import pytest
import torch

from spherewatch.buffer import RowReservoir
from spherewatch.schedule import Schedule


def test_reservoir_keeps_everything_below_capacity_in_order():
    r = RowReservoir(10)
    r.add(torch.arange(12.0).reshape(4, 3))
    r.add(torch.arange(12.0, 18.0).reshape(2, 3))
    z, _, _ = r.rows()
    assert torch.equal(z, torch.arange(18.0).reshape(6, 3))


def test_reservoir_is_a_uniform_sample_of_the_window():
    # each of the 100 rows must be kept with probability 10/100; over 2000 trials counts ~ Binomial(2000, 0.1)
    counts = Counter()
    trials = 2000
    for t in range(trials):
        r = RowReservoir(10, seed=t)
        for b in range(5):
            r.add(torch.arange(b * 20, b * 20 + 20, dtype=torch.float32).unsqueeze(1))
        z, _, _ = r.rows()
        assert z.shape == (10, 1)
        assert len(set(z.flatten().tolist())) == 10
        counts.update(int(v) for v in z.flatten().tolist())
    mean, sd = trials * 0.1, math.sqrt(trials * 0.1 * 0.9)
    assert all(abs(counts[i] - mean) < 5 * sd for i in range(100))


def test_reservoir_keeps_pairs_and_labels_aligned_and_stores_fp32_detached():
    r = RowReservoir(8, seed=1)
    for b in range(4):
        z = torch.arange(b * 6, b * 6 + 6, dtype=torch.float16).unsqueeze(1).repeat(1, 2).requires_grad_(True)
        r.add(z, z * 10, torch.arange(b * 6, b * 6 + 6))
    z, p, lab = r.rows()
    assert z.dtype == torch.float32 and not z.requires_grad
    torch.testing.assert_close(p, z * 10)
    torch.testing.assert_close(lab.float(), z[:, 0])


def test_reservoir_rejects_rows_of_another_width():
    r = RowReservoir(8)
    r.add(torch.randn(3, 4))
    with pytest.raises(ValueError, match="D=4"):
        r.add(torch.randn(3, 5))


def test_schedule_next_after():
    s = Schedule(every_n_steps=10, start_step=5)
    assert [s.next_after(x) for x in (-1, 4, 5, 14, 15)] == [5, 5, 15, 15, 25]
    assert s.is_due(15) and not s.is_due(16)


def test_a_window_reset_keeps_the_preallocated_buffer():
    buf = RowReservoir(8)
    buf.add(torch.randn(5, 4))
    storage = buf._z.data_ptr()
    buf.clear()
    assert len(buf) == 0 and buf.rows() == (None, None, None)
    buf.add(torch.ones(3, 4))
    assert buf._z.data_ptr() == storage  # no allocation per window
    assert torch.equal(buf.rows()[0], torch.ones(3, 4))
    buf.clear()
    buf.add(torch.ones(2, 6))  # a window with wider rows gets new tensors instead of an error
    assert buf.rows()[0].shape == (2, 6)
