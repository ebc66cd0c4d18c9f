"""Issue 22 row 13: finite rows whose sum of squares overflows fp32 (entries near 1e37, or bf16 rows near 1e20) keep
their direction: the metrics read what the same rows at unit scale read, and no false `nonfinite` alert fires."""
from __future__ import annotations

import pytest
import torch

import spherewatch.metrics as M

KEYS = ("uniformity", "effective_rank", "mean_cosine", "alignment", "normalized_std", "collapsed_dimensions", "lidar")


def run(make_monitor, z, zp):
    mon = make_monitor(sinks=("memory",), every_n_steps=1, preset="full")
    mon.observe(z, zp)
    mon.step(0)
    return mon


@pytest.mark.parametrize("scale,dtype", [(2.0 ** 123, torch.float32), (2.0 ** 66, torch.bfloat16)])  # ~1e37, ~7e19: exact
def test_huge_finite_rows_read_like_the_same_rows_at_unit_scale(scale, dtype, make_monitor):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(128, 16, generator=g).to(dtype)
    pos = (base.float() + 0.3 * torch.randn(128, 16, generator=g)).to(dtype)
    huge, huge_pos = (base.float() * scale).to(dtype), (pos.float() * scale).to(dtype)
    assert torch.isfinite(huge.float()).all() and not torch.isfinite(torch.linalg.vector_norm(huge.float(), dim=1)).all()
    ref, big = run(make_monitor, base, pos), run(make_monitor, huge, huge_pos)
    assert [a.rule for a in big.alerts if "nonfinite" in a.rule] == []
    assert big.last_values["spherewatch/nonfinite_fraction"] == 0.0
    for key in KEYS:
        assert big.last_values[f"spherewatch/{key}"] == pytest.approx(ref.last_values[f"spherewatch/{key}"], rel=1e-4,
                                                                      abs=1e-5), key
    assert big.last_values["spherewatch/norm_mean"] == pytest.approx(ref.last_values["spherewatch/norm_mean"] * scale,
                                                                     rel=1e-2)


def test_the_public_functions_keep_the_direction_of_huge_rows():
    base = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    for fn in (M.uniformity, M.effective_rank, M.mean_cosine, M.normalized_std):
        assert fn(base * 1e37).item() == pytest.approx(fn(base).item(), rel=1e-5), fn.__name__
