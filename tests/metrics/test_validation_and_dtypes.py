"""Every metric: bad input errors that name the value, any float dtype, 0-d outputs, no host synchronisation."""
import pytest
import torch

import spherewatch.metrics as M

Y = torch.randn(12, 6)

SINGLE = {
    "uniformity": lambda x: M.uniformity(x),
    "uniformity_estimate": lambda x: M.uniformity_estimate(x, chunk_size=4).value,
    "effective_rank": lambda x: M.effective_rank(x),
    "effective_rank_centered": lambda x: M.effective_rank(x, center=True),
    "normalized_std": lambda x: M.normalized_std(x),
    "mean_cosine": lambda x: M.mean_cosine(x),
    "dead_dimensions": lambda x: M.dead_dimensions(x),
    "spectrum": lambda x: M.spectrum(x),
    "collapsed_dimensions": lambda x: M.collapsed_dimensions(x),
    "alpha_req": lambda x: M.alpha_req(x).alpha,
    "nonfinite_fraction": lambda x: M.nonfinite_fraction(x),
    "norm_mean": lambda x: M.norm_stats(x)["norm_mean"],
    "alignment": lambda x: M.alignment(x, x.flip(0)),
    "nc1": lambda x: M.nc1(x, torch.arange(x.shape[0]) % 2 if x.ndim else torch.zeros(0), num_classes=2),
}
NEEDS_TWO_ROWS = set(SINGLE) - {"nonfinite_fraction", "norm_mean", "alignment"}


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_not_2d_is_a_value_error_naming_the_shape(name):
    with pytest.raises(ValueError, match=r"2-D tensor \(N, D\), got shape \(8, 4, 16\)"):
        SINGLE[name](torch.randn(8, 4, 16))
    if name in ("alpha_req", "collapsed_dimensions"):
        return  # a 1-D input is a precomputed spectrum for these two (tested in test_spectrum.py)
    with pytest.raises(ValueError, match=r"got shape \(8,\)"):
        SINGLE[name](torch.randn(8))


@pytest.mark.parametrize("name", sorted(SINGLE))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_dtype_is_a_type_error_naming_the_dtype(name, dtype):
    with pytest.raises(TypeError, match=str(dtype).replace(".", r"\.")):
        SINGLE[name](torch.ones(8, 4).to(dtype))


@pytest.mark.parametrize("name", sorted(NEEDS_TWO_ROWS))
def test_fewer_than_two_rows_is_a_value_error(name):
    with pytest.raises(ValueError, match=r"at least 2 rows, got shape \(1, 4\)"):
        SINGLE[name](torch.randn(1, 4))


@pytest.mark.parametrize("name", sorted(set(SINGLE) - {"alignment", "nc1"}))
def test_non_tensor_input_is_a_type_error(name):
    with pytest.raises(TypeError, match="list"):
        SINGLE[name]([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(TypeError, match="list"):
        M.alignment([[1.0, 2.0]], Y)
    with pytest.raises(TypeError, match="list"):
        M.nc1([[1.0, 2.0]], torch.zeros(1, dtype=torch.long))


def test_mismatched_pair_shapes():
    with pytest.raises(ValueError, match=r"same shape.*\(12, 6\) and \(11, 6\)"):
        M.alignment(Y, Y[:11])


def test_bad_alpha():
    with pytest.raises(ValueError, match="`alpha`"):
        M.alignment(Y, Y, alpha=0)
    with pytest.raises(TypeError, match="`alpha`"):
        M.alignment(Y, Y, alpha="2")


@pytest.mark.parametrize("name", sorted(SINGLE))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_float_dtype_is_computed_in_at_least_fp32(name, dtype):
    x = (torch.randn(40, 6, generator=torch.Generator().manual_seed(0)) + 0.5).to(dtype)
    got = SINGLE[name](x)
    ref = SINGLE[name](x.to(torch.float64))
    assert got.dtype in (torch.float32, torch.float64)
    # same (rounded) data: fp32 arithmetic must agree with fp64 to fp32 accuracy, not bf16 accuracy
    torch.testing.assert_close(got.double(), ref.double(), rtol=2e-4, atol=2e-5, equal_nan=True)


@pytest.mark.parametrize("name", sorted(set(SINGLE) - {"spectrum"}))
def test_outputs_are_zero_dim_tensors(name):
    out = SINGLE[name](torch.randn(30, 5))
    assert isinstance(out, torch.Tensor) and out.ndim == 0


#: Metrics that run an eigen-decomposition: they check its result on the host (one sync per decomposition, which
#: CUDA's solvers do anyway to check their status) so that a failed device solver can be retried on the CPU.
DECOMPOSING = {"effective_rank", "effective_rank_centered", "spectrum", "collapsed_dimensions", "alpha_req", "nc1"}


@pytest.mark.parametrize("name", sorted(set(SINGLE) - DECOMPOSING))
def test_no_host_synchronisation(name):
    # On the meta device any `.item()`, `bool(tensor)` or data-dependent Python branch raises: a metric that
    # runs there never syncs the host on an accelerator either. Output stays on the input's device.
    x = torch.empty(300, 16, device="meta")
    out = SINGLE[name](x)
    assert out.device.type == "meta"


@pytest.mark.parametrize("name", sorted(DECOMPOSING))
def test_decomposing_metrics_synchronise_only_to_check_the_decomposition(name):
    # the only host read is the finiteness check of the eigen-decomposition: with it answered, meta runs through
    import spherewatch.metrics._linalg as L

    x = torch.empty(300, 16, device="meta")
    original = L._all_finite
    try:
        L._all_finite = lambda t: True
        out = SINGLE[name](x)
    finally:
        L._all_finite = original
    assert out.device.type == "meta"


def test_requires_grad_and_non_contiguous_inputs_are_fine():
    base = torch.randn(64, 32, requires_grad=True)
    view = base[:, ::2]  # non-contiguous
    assert not view.is_contiguous()
    for name, fn in SINGLE.items():
        out = fn(view)
        assert torch.isfinite(out).all() or name == "alpha_req", name


def test_zero_rows_never_give_nan():
    x = torch.randn(40, 8)
    x[::3] = 0
    for name, fn in SINGLE.items():
        out = fn(x)
        assert not torch.isnan(out).any() or name == "alpha_req", name
    z = torch.zeros(10, 4)
    for name in ("uniformity", "effective_rank", "normalized_std", "mean_cosine", "spectrum", "collapsed_dimensions"):
        assert not torch.isnan(SINGLE[name](z)).any(), name
