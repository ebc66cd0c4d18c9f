"""fp64 Gram matrices and guarded symmetric eigen-decompositions shared by the spectral metrics.

Why fp64 Grams (measured; ``benchmarks/metrics.py`` prints the table): eigenvalues of an fp32 Gram ``Z^T Z``
carry an absolute error of ~``eps32 * lambda_max``, so singular values below ~``sqrt(D * eps32) * sigma_max``
(0.8% at D=1024) are noise, and a realistic spectrum's tail lives there. Accumulating the Gram in fp64 (products
of fp32 inputs are exact in fp64) and decomposing it in fp64 resolves singular values down to ~1e-8 of
``sigma_max``: on every regime of issue 10 (isotropic, power laws, exact rank 1/8/64, near collapse down to 1e-5
noise) the effective rank is within 1.2e-5 relative of an fp64 SVD at D <= 1024, where fp32 ``svdvals`` and QR
then SVD of R are within 1.3e-4 (their spurious singular values at ``eps32 * sigma_max`` add entropy on exactly
low-rank data). Speed on one CPU thread (``benchmarks/metrics.py --only rank``): 1.1-1.9x faster than fp32
``svdvals`` at D = 1024-2048 (the Gram is a GEMM, only its upper block triangle from D = 1024, and the ``D x D``
eigenproblem is small, while ``svdvals`` of a tall matrix runs a Householder QR of all N rows first), 0.74-1.36x at
D <= 512, where the fp64 GEMM (half the fp32 rate) costs as much as fp32 ``svdvals``: there, for uncentred CPU
input, :func:`~spherewatch.metrics.effective_rank` calls ``svdvals`` itself (accurate too: within 2e-4). Grams add
up across batches and ranks, so the route streams (and the DDP path and ``spectrum`` always use it).

GPU safety: ``eigvalsh``/``eigh`` can fail or mis-converge on large low-rank matrices on CUDA (pytorch #94772,
#105359) and CUDA has no bf16 decompositions (#98308). Every decomposition here runs on an fp64 copy; when the
device's solver raises or returns non-finite values for a finite input, it is recomputed on the CPU in fp64 and a
:class:`DecompositionFallbackWarning` is emitted (the Monitor turns it into one fault report per part).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch

from spherewatch.metrics._shared import reuse, sharing

__all__ = ["DecompositionFallbackWarning", "gram64", "rows_gram64", "rows_eigvalsh64", "centred_moments64",
           "eigvalsh64", "eigh64"]


_COL_BLOCK = 256  # column block of the upper-triangular Gram (measured best of 128/256/512 on 1 thread)


def _chunk_rows(k: int) -> int:
    """Rows per fp64 chunk: ~4 MB of fp64 (cache-sized: 10-15% faster than 32 MB chunks at D <= 512 on one
    thread), at least 1024 rows so that the GEMMs stay large."""
    return max(1024, (1 << 19) // max(k, 1))


class DecompositionFallbackWarning(UserWarning):
    """An eigen-decomposition failed (``LinAlgError``) or returned non-finite values on the input's device and
    was recomputed on the CPU in fp64. The metric value is valid; the warning says the device solver is unreliable
    for this input (typical: large, low-rank fp32 matrices on CUDA). ``warnings.catch_warnings(record=True)``
    collects it; the Monitor reports it once through its fault path."""


def gram64(
    a: torch.Tensor, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, *, transpose: bool = False
) -> torch.Tensor:
    """``A^T A`` accumulated in fp64, ``(K, K)`` for ``A`` of shape ``(M, K)``, symmetric (``A A^T`` when
    ``transpose``).

    Rows are processed in chunks (a bounded fp64 copy, ~32 MB), each mapped to fp64 by ``transform`` when given
    (e.g. normalise and centre; default: upcast); for ``K >= 1024`` only the upper block triangle is multiplied (about 60%
    of the flops of a full GEMM), then mirrored.
    """
    if transpose:
        a = a.T
    m, k = a.shape
    g = torch.zeros(k, k, dtype=torch.float64, device=a.device)
    rows = _chunk_rows(k)
    for r in range(0, m, rows):
        b = a[r : r + rows]
        b = transform(b) if transform is not None else b.to(torch.float64)
        if k < 4 * _COL_BLOCK:
            g.addmm_(b.T, b)
            continue
        for i in range(0, k, _COL_BLOCK):
            g[i : i + _COL_BLOCK, i:].addmm_(b[:, i : i + _COL_BLOCK].T, b[:, i:])
    if k >= 4 * _COL_BLOCK:
        g = torch.triu(g) + torch.triu(g, 1).T
    return g


def _normalized64(b: torch.Tensor) -> torch.Tensor:
    """Rows of an fp64 chunk L2-normalised in place (zero rows stay zero, as ``F.normalize``)."""
    return b.div_(torch.linalg.vector_norm(b, dim=1, keepdim=True).clamp_min_(1e-12))


def rows_gram64(x: torch.Tensor, *, normalize: bool, center: bool, side: str = "smaller") -> torch.Tensor:
    """fp64 Gram of the prepared rows ``Z`` of ``x`` (rows L2-normalised and column mean removed, both in fp64):
    ``Z^T Z`` (``D x D``) for ``side="features"``, or the smaller of ``Z^T Z`` and ``Z Z^T`` for
    ``side="smaller"`` (same non-zero eigenvalues, cheaper when ``N < D``).

    Normalising in fp64 matters near collapse: fp32 normalisation rounds every entry by ~``eps32 * |z|``, which
    is 0.6% of a 1e-5 spread around a common direction, and moved the centred effective rank by 0.1%.
    """
    n, d = x.shape
    # always a copy: the in-place steps below must never write into the caller's (fp64) tensor
    prep = (lambda b: _normalized64(b.to(torch.float64, copy=True))) if normalize else (
        lambda b: b.to(torch.float64, copy=True))
    if side != "features" and n < d:  # Z Z^T: the N x D fp64 copy is at most D^2 elements
        z = prep(x)
        if center:
            z.sub_(z.mean(dim=0))
        return gram64(z, transpose=True)
    if not center:
        return gram64(x, prep)
    return _centred(x, prep)[0]


def _centred(x: torch.Tensor, prep) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sum (z - m)(z - m)^T, m)`` of the prepared rows in one pass, ``m`` their fp64 column mean."""
    n, d = x.shape
    # Centred in one pass over the rows, with a shift: sum (z - s)(z - s)^T and sum (z - s) around the mean s of
    # the first chunk, then sum (z - m)(z - m)^T = S - n (m - s)(m - s)^T. With s that close to the mean the
    # correction is tiny and cancels nothing (near collapse, 1e-5 around a common direction, the uncorrected
    # formula would subtract two numbers equal to 10 digits); same result as two passes to ~1e-12 relative.
    shift = prep(x[: _chunk_rows(d)]).mean(dim=0)
    total = torch.zeros(d, dtype=torch.float64, device=x.device)

    def shifted(b: torch.Tensor) -> torch.Tensor:
        b = prep(b).sub_(shift)
        total.add_(b.sum(dim=0))
        return b

    g = gram64(x, shifted)
    delta = total / n
    return g.sub_(torch.outer(delta, delta).mul_(n)), shift + delta


def centred_moments64(x: torch.Tensor, *, normalize: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(C, m)``: the centred fp64 Gram ``sum_i (z_i - m)(z_i - m)^T`` (``D x D``) of the rows of ``x``
    (L2-normalised in fp64 when ``normalize``) and their fp64 column mean ``m``, in one pass (see
    :func:`rows_gram64`). The uncentred Gram is ``C + n m m^T`` (a sum of two PSD terms: nothing cancels).

    Example:
        >>> import torch
        >>> x = torch.randn(64, 4, dtype=torch.float64)
        >>> c, m = centred_moments64(x, normalize=False)
        >>> bool(torch.allclose(c + 64 * torch.outer(m, m), x.T @ x))
        True
    """
    prep = (lambda b: _normalized64(b.to(torch.float64, copy=True))) if normalize else (
        lambda b: b.to(torch.float64, copy=True))
    return _centred(x, prep)


def rows_eigvalsh64(x: torch.Tensor, *, normalize: bool, center: bool, side: str = "smaller") -> torch.Tensor:
    """Ascending fp64 eigenvalues of :func:`rows_gram64` ``(x, normalize, center, side)``.

    Inside an evaluation's :func:`~spherewatch.metrics._shared.shared_work` scope the work is shared: for
    ``N >= D`` (the ``D x D`` side) one pass computes the centred Gram and the mean of the prepared rows, the
    uncentred Gram is ``C + n m m^T``, and each Gram is decomposed once (``effective_rank_centered`` and
    ``spectrum`` read the same eigenvalues).
    """
    n, d = x.shape
    features = side == "features" or n >= d
    key = ("eigvalsh64", normalize, center, features)
    if not (sharing() and features):
        return reuse(x, key, lambda: eigvalsh64(rows_gram64(x, normalize=normalize, center=center, side=side)))

    def gram() -> torch.Tensor:
        c, m = reuse(x, ("moments64", normalize), lambda: centred_moments64(x, normalize=normalize))
        return c if center else torch.addr(c, m, m, alpha=n)

    return reuse(x, key, lambda: eigvalsh64(gram()))


def _fallback(what: str, fn, g: torch.Tensor, err: Optional[BaseException]):
    reason = f"{type(err).__name__}: {err}" if err is not None else "non-finite eigenvalues"
    warnings.warn(
        DecompositionFallbackWarning(
            f"{what} of a {tuple(g.shape)} {g.dtype} matrix on {g.device} failed ({reason}); recomputed on the CPU "
            "in float64."
        ),
        stacklevel=3,
    )
    try:
        return fn(g.detach().to("cpu", torch.float64))
    except Exception as cpu_err:  # LAPACK fp64 on a finite symmetric matrix: not seen in practice
        raise torch.linalg.LinAlgError(f"{what} failed on the device and on the CPU: {cpu_err}") from cpu_err


def _all_finite(t: torch.Tensor) -> bool:
    """The one host read of a decomposition (CUDA solvers synchronise to check their status anyway)."""
    return bool(torch.isfinite(t).all())


def _guarded(what: str, fn, g: torch.Tensor):
    g = g.to(torch.float64)
    g = 0.5 * (g + g.mT)
    err: Optional[BaseException] = None
    try:
        out = fn(g)
        first = out[0] if isinstance(out, tuple) else out
        if _all_finite(first) or not _all_finite(g):
            return out  # a non-finite input gives a non-finite answer everywhere: nothing to retry
    except (torch.linalg.LinAlgError, RuntimeError) as exc:
        if not _all_finite(g):
            raise
        err = exc
    out = _fallback(what, fn, g, err)
    return tuple(o.to(g.device) for o in out) if isinstance(out, tuple) else out.to(g.device)


def eigvalsh64(g: torch.Tensor) -> torch.Tensor:
    """Ascending fp64 eigenvalues of the symmetric part of ``g``, on ``g``'s device; CPU fallback (see module)."""
    return _guarded("eigvalsh", torch.linalg.eigvalsh, g)


def eigh64(g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(eigenvalues ascending, eigenvectors)`` in fp64 of the symmetric part of ``g``; CPU fallback."""
    return _guarded("eigh", torch.linalg.eigh, g)
