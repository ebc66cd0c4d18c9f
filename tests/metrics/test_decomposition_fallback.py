"""A failing or mis-converging device solver (pytorch #94772, #105359) never crashes a metric or turns it into NaN:
the decomposition is recomputed on the CPU in fp64 and a DecompositionFallbackWarning says so (once per call)."""
import warnings

import pytest
import torch

import spherewatch.metrics as M
from spherewatch.metrics import DecompositionFallbackWarning

X = torch.randn(300, 24, generator=torch.Generator().manual_seed(0)) @ torch.randn(24, 24)
LABELS = torch.arange(300) % 4
VIEWS = torch.stack([X, X + 0.1 * torch.randn(X.shape, generator=torch.Generator().manual_seed(1))], dim=1)

METRICS = {
    "effective_rank": lambda: M.effective_rank(X),
    "effective_rank_centered": lambda: M.effective_rank(X, center=True),
    "effective_rank_from_gram": lambda: M.effective_rank_from_gram(X.double().T @ X.double()),
    "spectrum": lambda: M.spectrum(X),
    "collapsed_dimensions": lambda: M.collapsed_dimensions(X),
    "alpha_req": lambda: M.alpha_req(X).alpha,
    "nc1": lambda: M.nc1(X, LABELS, num_classes=4),
    "lidar": lambda: M.lidar(VIEWS),
}


def _failing_once(monkeypatch, name, how):
    original = getattr(torch.linalg, name)
    calls = []

    def flaky(a, *args, **kwargs):
        calls.append(a.dtype)
        if len(calls) == 1:
            if how == "raise":
                raise torch.linalg.LinAlgError(f"linalg.{name}: The algorithm failed to converge (injected)")
            out = original(a, *args, **kwargs)
            if isinstance(out, tuple):
                return (torch.full_like(out[0], float("nan")),) + tuple(out[1:])
            return torch.full_like(out, float("nan"))
        return original(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, name, flaky)
    return calls


@pytest.mark.parametrize("how", ["raise", "nan"])
@pytest.mark.parametrize("name", sorted(METRICS))
def test_failed_decomposition_falls_back_and_warns(monkeypatch, name, how):
    expected = METRICS[name]()
    # small uncentred CPU input: fp32 svdvals (faster there, and accurate); everything else: an fp64 decomposition
    solver = {"nc1": "eigh", "lidar": "eigh", "effective_rank": "svdvals"}.get(name, "eigvalsh")
    calls = _failing_once(monkeypatch, solver, how)
    with pytest.warns(DecompositionFallbackWarning, match="recomputed on the CPU in float64"):
        got = METRICS[name]()
    if solver == "svdvals":  # the fallback of the svdvals route is the fp64 Gram, decomposed by eigvalsh
        assert calls == [torch.float32]
    else:
        assert calls and all(dtype == torch.float64 for dtype in calls)  # upcast before every decomposition
        assert len(calls) >= 2  # the retry ran
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)


def test_a_healthy_decomposition_emits_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecompositionFallbackWarning)
        for fn in METRICS.values():
            fn()


def test_when_the_cpu_fails_too_the_error_is_raised_not_nan(monkeypatch):
    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("injected")

    monkeypatch.setattr(torch.linalg, "eigvalsh", broken)
    with pytest.warns(DecompositionFallbackWarning), pytest.raises(torch.linalg.LinAlgError, match="on the CPU"):
        M.effective_rank(X, center=True)


def test_compute_tap_metrics_hands_the_fallback_to_the_caller(monkeypatch):
    from spherewatch.compute import compute_tap_metrics

    names = ["effective_rank", "spectrum", "alpha_req"]
    expected, _ = compute_tap_metrics(X, None, None, names, spectral=True)
    _failing_once(monkeypatch, "eigvalsh", "nan")
    fallbacks = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecompositionFallbackWarning)  # collected, not emitted
        scalars, _ = compute_tap_metrics(X, None, None, names, spectral=True, fallbacks=fallbacks)
    assert len(fallbacks) == 1 and isinstance(fallbacks[0], DecompositionFallbackWarning)
    assert scalars["effective_rank"].item() == pytest.approx(expected["effective_rank"].item())
