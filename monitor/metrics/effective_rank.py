"""Effective rank / RankMe (Roy & Vetterli, 2007; Garrido et al., 2023)."""
from __future__ import annotations

import warnings

import torch

from spherewatch.metrics._linalg import DecompositionFallbackWarning, eigvalsh64, rows_eigvalsh64
from spherewatch.metrics._validation import as_embeddings, normalize_rows

__all__ = ["effective_rank", "effective_rank_from_gram", "entropy_effective_rank"]


def entropy_effective_rank(sigma: torch.Tensor, rtol: float = 0.0) -> torch.Tensor:
    """``exp(H(p))`` with ``p = sigma / sum(sigma)`` and ``0 log 0 = 0``, computed in fp64.

    Negative inputs (round-off of a clamped eigenvalue) count as 0, as do values at or below
    ``rtol * max(sigma)`` (default 0: no cut; a relative cut at the fp32 round-off level drops the tail of
    realistic spectra, METRICS.md "Precision"). An all-zero input gives 1, never NaN.
    """
    sigma = sigma.to(torch.float64).clamp(min=0)
    if rtol > 0:
        sigma = torch.where(sigma > rtol * sigma.max(), sigma, torch.zeros_like(sigma))
    total = sigma.sum()
    p = sigma / torch.where(total > 0, total, torch.ones_like(total))
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    return torch.exp(-plogp.sum())


def _erank_of_gram64(g: torch.Tensor) -> torch.Tensor:
    lam = eigvalsh64(g)
    return entropy_effective_rank(torch.sqrt(lam.clamp(min=0)))


def effective_rank_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Effective rank from an accumulated ``D x D`` Gram matrix ``Z^T Z`` (streamable across batches and ranks).

    ``sigma_k = sqrt(lambda_k(Z^T Z))``, eigenvalues from an fp64 ``eigvalsh`` (negative round-off clamped to 0,
    no other cut). Accumulate the Gram **in fp64** (``gram += b.double().T @ b.double()``, or the centred
    ``m2`` of streamed moments): an fp32 Gram cannot resolve singular values below ~``sqrt(D * eps32) *
    sigma_max`` (0.8% at D=1024), whatever is done afterwards. Returns a 0-d tensor in the Gram's dtype when it is
    fp64, else fp32, on the Gram's device.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import effective_rank_from_gram
        >>> float(effective_rank_from_gram(torch.eye(4) * 10))
        4.0
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"Expected `gram` to be a square (D, D) matrix, got shape {tuple(gram.shape)}.")
    out_dtype = torch.float64 if gram.dtype == torch.float64 else torch.float32
    return _erank_of_gram64(gram).to(out_dtype)


def effective_rank(x: torch.Tensor, *, center: bool = False, normalize: bool = True) -> torch.Tensor:
    r"""Effective rank (RankMe): the exponential of the entropy of the normalised singular values.

    .. math:: \mathrm{erank}(Z) = \exp\Big(-\sum_k p_k \log p_k\Big),\quad p_k = \frac{\sigma_k}{\sum_j \sigma_j}

    with ``0 log 0 = 0`` and no epsilon (an epsilon inflates the value, METRICS.md) and no numerical-rank cut.

    How it is computed, and why (measured against an fp64 SVD of the same rows on isotropic data, power laws
    ``sigma_i ~ i^-a`` for a in 0.5..1.5, exact rank 1/8/64, one vector plus 1e-2..1e-5 noise, D up to 4096, N
    below and above D; ``benchmarks/metrics.py`` prints the table): the fp64 route prepares the rows in fp64
    (L2-normalised, centred in one shifted pass), accumulates the Gram of the smaller side (``Z^T Z`` when
    ``N >= D``, else ``Z Z^T``) in fp64 and decomposes it with an fp64 ``eigvalsh``: within ~1e-5 relative
    everywhere. fp32 ``svdvals`` is within ~2e-4 (its ``eps32 * sigma_max`` round-off singular values add
    entropy to exactly low-rank data), and an fp32 Gram is off by up to 2x (it resolves ``sigma`` only down to
    ~``sqrt(D * eps32) * sigma_max``: 213 instead of 469 at a=0.75, D=1024). Which route runs is chosen by
    speed, as both are accurate: on the CPU, for uncentred fp32/bf16/fp16 input with ``min(N, D) <= 512``
    (:data:`SVDVALS_MAX_SIDE`), fp32 ``svdvals``, which is as fast as or faster than the fp64 Gram there (the
    fp64 GEMM runs at half the fp32 rate); everywhere else the fp64 Gram, 1.0-1.7x faster than ``svdvals`` at
    D = 1024-2048 on one CPU thread, streamable (Grams add up: :func:`effective_rank_from_gram`) and with a CPU
    fallback when a device solver fails (``DecompositionFallbackWarning``).

    Args:
        x: ``(N, D)`` embeddings, ``N >= 2``, any float dtype (bf16/fp16 are upcast).
        center: subtract the column mean first. The raw (uncentred) matrix is RankMe; a large common offset
            crushes it (e.g. ``N(0, I) + 10`` in ``D=128``: ~25.7 uncentred, ~127.5 centred). The Monitor logs
            the centred variant under its own key, ``effective_rank_centered``.
        normalize: L2-normalise rows first (the default; makes it invariant to row scaling).
            ``normalize=False`` gives RankMe of the raw matrix exactly as in the paper.

    Returns:
        0-d tensor (fp32; fp64 for fp64 input) on the input's device, in ``[1, min(N, D)]``
        (``min(N - 1, D)`` when centred). The fp64 eigen-decomposition synchronises with the host on GPUs.

    How to read it: 1 = complete collapse, ``D`` = all directions used equally. Biased low when N is not
    much larger than D (isotropic ``D=128``: ~103 at ``N=D``, ~124 at ``N=4D``): compare values computed on the
    same fixed number of rows, and never average per-batch values.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import effective_rank
        >>> float(effective_rank(torch.eye(16)))
        16.0
        >>> round(float(effective_rank(torch.diag(torch.tensor([3.0, 1.0])), normalize=False)), 6)
        1.754765

    References: Roy & Vetterli, "The effective rank", EUSIPCO 2007; Garrido et al., "RankMe", ICML 2023.
    """
    x = as_embeddings(x)
    if _svdvals_is_faster(x, center):
        sigma = _svdvals32(normalize_rows(x) if normalize else x)
        if sigma is not None:
            return entropy_effective_rank(sigma).to(x.dtype)
    lam = rows_eigvalsh64(x, normalize=normalize, center=center)
    return entropy_effective_rank(torch.sqrt(lam.clamp(min=0))).to(x.dtype)


#: Largest smaller side for which fp32 ``svdvals`` is used on the CPU (measured, one thread: at ``min(N, D) <=
#: 512`` it is as fast as or faster than the fp64 Gram -- the fp64 GEMM runs at half the fp32 rate and the ``D x
#: D`` eigenproblem is small, so neither wins by much -- and within 2e-4 relative of an fp64 SVD on every regime).
SVDVALS_MAX_SIDE = 512


def _svdvals_is_faster(x: torch.Tensor, center: bool) -> bool:
    """fp32 ``svdvals`` for small, uncentred CPU inputs; everything else (GPU, fp64 input, centring, wide
    shapes) takes the fp64 Gram."""
    return x.device.type == "cpu" and x.dtype != torch.float64 and not center and min(x.shape) <= SVDVALS_MAX_SIDE


def _svdvals32(z: torch.Tensor):
    """Singular values of fp32 ``z``, or ``None`` when LAPACK fails or returns non-finite values: the caller then
    takes the fp64 Gram route (a :class:`DecompositionFallbackWarning` says so when the input was finite; a
    non-finite input goes there silently and gives NaN, as on every route)."""
    err = None
    try:
        sigma = torch.linalg.svdvals(z)
        if bool(torch.isfinite(sigma).all()):  # CPU only: no device sync
            return sigma
    except (torch.linalg.LinAlgError, RuntimeError) as exc:
        err = exc
    if bool(torch.isfinite(z).all()):
        reason = f"{type(err).__name__}: {err}" if err is not None else "non-finite singular values"
        warnings.warn(DecompositionFallbackWarning(
            f"svdvals of a {tuple(z.shape)} {z.dtype} matrix on {z.device} failed ({reason}); recomputed on the CPU "
            "in float64 (fp64 Gram)."), stacklevel=3)
    return None
