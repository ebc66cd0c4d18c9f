"""Effective rank / RankMe (Roy & Vetterli, 2007; Garrido et al., 2023)."""
from __future__ import annotations

from typing import Optional

import torch

from spherewatch.metrics._validation import as_embeddings, normalize_rows

__all__ = ["effective_rank", "effective_rank_from_gram", "entropy_effective_rank"]


def _finfo_eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def entropy_effective_rank(sigma: torch.Tensor, rtol: Optional[float] = None, size: int = 1) -> torch.Tensor:
    """``exp(H(p))`` with ``p = sigma / sum(sigma)``, ``0 log 0 = 0``.

    Singular values at or below ``rtol * max(sigma)`` (default ``size * eps``, the usual numerical-rank
    tolerance) count as exact zeros, so round-off in the Gram route does not inflate the value.
    An all-zero input gives 1, never NaN.
    """
    sigma = sigma.clamp(min=0)
    if rtol is None:
        rtol = size * _finfo_eps(sigma.dtype)
    smax = sigma.max()
    sigma = torch.where(sigma > rtol * smax, sigma, torch.zeros_like(sigma))
    total = sigma.sum()
    p = sigma / torch.where(total > 0, total, torch.ones_like(total))
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    return torch.exp(-plogp.sum())


def effective_rank_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Effective rank from an accumulated ``D x D`` Gram matrix ``Z^T Z`` (exact; streamable across batches/ranks).

    ``sigma_k = sqrt(lambda_k(Z^T Z))``. Eigenvalues at or below ``D * eps * lambda_max`` are round-off of the
    fp32 Gram (measured at 1e-7..4e-7 relative beyond the true rank) and count as zero.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import effective_rank_from_gram
        >>> float(effective_rank_from_gram(torch.eye(4) * 10))
        4.0
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"Expected `gram` to be a square (D, D) matrix, got shape {tuple(gram.shape)}.")
    g = gram.to(torch.float64 if gram.dtype == torch.float64 else torch.float32)
    lam = torch.linalg.eigvalsh(0.5 * (g + g.T))
    d = g.shape[0]
    # eigvalsh of the Gram squares the condition number: eigenvalues below D*eps*lambda_max are noise.
    lam = lam.clamp(min=0)
    lam = torch.where(lam > d * _finfo_eps(lam.dtype) * lam.max(), lam, torch.zeros_like(lam))
    return entropy_effective_rank(torch.sqrt(lam), rtol=0.0)


def effective_rank(x: torch.Tensor, *, center: bool = False, normalize: bool = True) -> torch.Tensor:
    r"""Effective rank (RankMe): the exponential of the entropy of the normalised singular values.

    .. math:: \mathrm{erank}(Z) = \exp\Big(-\sum_k p_k \log p_k\Big),\quad p_k = \frac{\sigma_k}{\sum_j \sigma_j}

    with ``0 log 0 = 0`` (no epsilon: an epsilon inflates the value, METRICS.md) and singular values below the
    numerical-rank tolerance treated as zero (``max(N, D) * eps * sigma_max`` for the SVD route,
    ``D * eps * lambda_max`` on the Gram eigenvalues).

    Computed from ``eigvalsh`` of the ``D x D`` Gram ``Z^T Z`` when ``N > D`` (exact and cheaper than an SVD),
    else from ``svdvals(Z)``.

    Args:
        x: ``(N, D)`` embeddings, ``N >= 2``.
        center: subtract the column mean first. The raw (uncentred) matrix is RankMe; a large common offset
            crushes it (e.g. ``N(0, I) + 10`` in ``D=128``: ~25.7 uncentred, ~127.5 centred). The Monitor logs
            the centred variant under its own key, ``effective_rank_centered``.
        normalize: L2-normalise rows first (the default, as every spherewatch metric; makes it invariant to
            row scaling). ``normalize=False`` gives RankMe of the raw matrix exactly as in the paper.

    Returns:
        0-d fp32 tensor on the input's device, in ``[1, min(N, D)]``.

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
    z = normalize_rows(x) if normalize else x
    if center:
        z = z - z.mean(dim=0, keepdim=True)
    n, d = z.shape
    if n > d:
        return effective_rank_from_gram(z.T @ z).to(x.dtype)
    sigma = torch.linalg.svdvals(z)
    return entropy_effective_rank(sigma, size=max(n, d)).to(x.dtype)
