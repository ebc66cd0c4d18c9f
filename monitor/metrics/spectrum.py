"""Covariance spectrum of normalised embeddings: dimensional collapse (Jing et al., 2022) and alpha-ReQ."""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch

from spherewatch.metrics._linalg import eigvalsh64, rows_eigvalsh64
from spherewatch.metrics._validation import as_embeddings

__all__ = ["spectrum", "spectrum_from_moments", "collapsed_dimensions", "alpha_req", "AlphaReQ"]


def _spectrum_or_embeddings(x: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor is taken as a precomputed descending spectrum, anything else as embeddings."""
    if isinstance(x, torch.Tensor) and x.ndim == 1:
        if x.is_complex() or not x.is_floating_point():
            raise TypeError(f"Expected a floating spectrum, got dtype {x.dtype}. Convert with `x.float()`.")
        if x.shape[0] < 1:
            raise ValueError("Expected a non-empty spectrum, got shape (0,).")
        return x
    return spectrum(x)


class AlphaReQ(NamedTuple):
    """Power-law decay exponent of the spectrum and the weighted R^2 of the log-log fit (0-d tensors)."""

    alpha: torch.Tensor
    r2: torch.Tensor


def spectrum_from_moments(n: int, mean: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """Descending covariance eigenvalues from streamed moments: ``mean`` (D,) and ``m2 = sum (z - mean)(z - mean)^T``.

    ``m2`` should be accumulated in fp64 (Chan merges of per-chunk centred Grams); it is decomposed with an fp64
    ``eigvalsh`` (CPU fallback, ``DecompositionFallbackWarning``). Returns fp32 ``(D,)`` clamped at 0, on ``m2``'s
    device.
    """
    lam = eigvalsh64(m2) / max(n - 1, 1)
    return lam.flip(0).clamp(min=0).to(torch.float32)


def spectrum(x: torch.Tensor) -> torch.Tensor:
    r"""Eigenvalues of the covariance of the L2-normalised rows, in descending order.

    .. math:: C = \frac{1}{N-1}\sum_i (\hat z_i - \bar z)(\hat z_i - \bar z)^\top

    Args:
        x: ``(N, D)`` embeddings, ``N >= 2``.

    Returns:
        ``(D,)`` fp32 tensor on the input's device (clamped at 0). Their sum is the total variance
        ``~ 1 - ||mean||^2``. Computed from an fp64 Gram of the centred rows and an fp64 ``eigvalsh`` (the
        ``N x N`` Gram when ``N < D``), accurate down to ~1e-15 of ``lambda_max`` (see :func:`effective_rank`
        for the measurements); the decomposition synchronises with the host on GPUs.

    How to read it: healthy isotropic embeddings have all eigenvalues near ``1/D``; dimensional collapse shows
    as a tail of eigenvalues at numerical zero (see :func:`collapsed_dimensions`). With ``N <= D`` at most
    ``N - 1`` eigenvalues can be non-zero.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import spectrum
        >>> z = torch.tensor([[1., 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])
        >>> [round(float(v), 4) for v in spectrum(z)]
        [0.6667, 0.6667, 0.0]

    Reference: Jing et al., "Understanding Dimensional Collapse in Contrastive Self-supervised Learning", ICLR 2022.
    """
    x = as_embeddings(x)
    # the Gram of the smaller side: same non-zero eigenvalues either side
    lam64 = rows_eigvalsh64(x, normalize=True, center=True, side="smaller")
    lam = (lam64 / max(x.shape[0] - 1, 1)).flip(0).clamp(min=0).to(torch.float32)
    d = x.shape[1]
    if lam.shape[0] < d:  # N < D: the other D - N eigenvalues are exactly 0
        lam = torch.cat([lam, lam.new_zeros(d - lam.shape[0])])
    return lam


def collapsed_dimensions(x: torch.Tensor, *, threshold: float = 1e-5) -> torch.Tensor:
    """Number of covariance eigenvalues below ``threshold * lambda_max`` (numerically zero in fp32).

    Args:
        x: ``(N, D)`` embeddings, or a precomputed 1-D spectrum (from :func:`spectrum`).
        threshold: relative threshold (default ``1e-5``, METRICS.md).

    Returns:
        0-d fp32 tensor (a count, as float so it logs like every other scalar). 0 = healthy; ``D - k`` =
        dimensional collapse onto a k-dimensional subspace (``D - 1``: a single direction carries all the
        variance). It is relative to ``lambda_max``, so it does **not** see collapse toward a point: rows
        shrinking onto one vector with some jitter left read 0 (the demo's collapsing SimSiam run does), and an
        exactly constant batch reads 0 too (no variance at all); watch ``mean_cosine`` / ``uniformity`` for that.
        ``N <= D`` rows force at least ``D - N + 1`` zero eigenvalues: use ``N > D`` samples.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import collapsed_dimensions
        >>> z = torch.randn(256, 8) @ torch.diag(torch.tensor([1., 1, 1, 1, 0, 0, 0, 0]))
        >>> float(collapsed_dimensions(z))
        4.0
    """
    lam = _spectrum_or_embeddings(x)
    return (lam < threshold * lam.max()).sum().to(torch.float32)


def alpha_req(x: torch.Tensor, *, window: Tuple[int, int] = (11, 100), rtol: float = 1e-5) -> AlphaReQ:
    r"""Power-law decay exponent of the covariance spectrum (alpha-ReQ) and the quality of the fit.

    Fits ``log lambda_i = c - alpha log i`` by weighted least squares with weights ``1/i`` over the ranks
    ``i`` in ``window`` (1-based, inclusive; the reference window is 11..100) that lie inside the numerical
    rank (``lambda_i > rtol * lambda_1``). When ``D`` is smaller than the window's end, the window becomes
    ``[max(1, min(first, D // 10)), D]``.

    Args:
        x: ``(N, D)`` embeddings, or a precomputed descending 1-D spectrum.
        window: ``(first_rank, last_rank)``.
        rtol: eigenvalues below ``rtol * lambda_1`` are outside the numerical rank and excluded.

    Returns:
        ``AlphaReQ(alpha, r2)``: 0-d tensors (fp32; fp64 for an fp64 spectrum). ``alpha ~ 0`` = white spectrum;
        ``alpha ~ 1`` typical of good representations at large D; large ``alpha`` with a poor fit (low ``r2``) =
        dimensional collapse. NaN when fewer than two ranks of the window are inside the numerical rank (the
        spectrum is collapsed below the window). It reads the *shape* of the centred spectrum: when rows collapse
        toward a point, the jitter left is whiter than a trained spectrum and ``alpha`` *falls* (the demo's
        collapsing run). Depends on N/D and D: compare values at a fixed N.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import alpha_req
        >>> lam = torch.arange(1, 201, dtype=torch.float32) ** -1.5
        >>> round(float(alpha_req(lam).alpha), 3)
        1.5

    Reference: Agrawal et al., "alpha-ReQ: Assessing Representation Quality ...", NeurIPS 2022.
    """
    lam = _spectrum_or_embeddings(x)
    d = lam.shape[0]
    lo, hi = int(window[0]), int(window[1])
    if lo < 1 or hi <= lo:
        raise ValueError(f"Expected `window` = (first, last) with 1 <= first < last, got {window!r}.")
    if d < hi:
        hi = d
        lo = max(1, min(lo, d // 10))
    ranks = torch.arange(1, d + 1, device=lam.device, dtype=torch.float64)
    lamf = lam.to(torch.float64)  # the weighted fit in fp64: cheap, and no round-off in the sums
    inside = (ranks >= lo) & (ranks <= hi) & (lamf > rtol * lamf[0]) & (lamf > 0)
    w = torch.where(inside, 1.0 / ranks, torch.zeros_like(ranks))
    lx = torch.log(ranks)
    ly = torch.log(torch.where(inside, lamf, torch.ones_like(lamf)))
    sw = w.sum()
    mx = (w * lx).sum() / sw
    my = (w * ly).sum() / sw
    sxx = (w * (lx - mx) ** 2).sum()
    sxy = (w * (lx - mx) * (ly - my)).sum()
    syy = (w * (ly - my) ** 2).sum()
    slope = sxy / sxx
    enough = inside.sum() >= 2
    nan = torch.full_like(slope, float("nan"))
    alpha = torch.where(enough, -slope, nan)
    r2 = torch.where(enough & (syy > 0), sxy * sxy / (sxx * syy), torch.where(enough, torch.ones_like(slope), nan))
    out_dtype = torch.float64 if lam.dtype == torch.float64 else torch.float32
    return AlphaReQ(alpha.to(out_dtype), r2.to(out_dtype))
