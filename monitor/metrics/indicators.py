"""Cheap collapse indicators: no decomposition, O(N D), no host synchronisation."""
from __future__ import annotations

from typing import Dict

import torch

from spherewatch.metrics._validation import as_embeddings, normalize_rows

__all__ = ["normalized_std", "mean_cosine", "nonfinite_fraction", "norm_stats", "dead_dimensions", "mean_cosine_of_unit",
           "norm_stats_of_norms"]


def normalized_std(x: torch.Tensor) -> torch.Tensor:
    r"""Mean over dimensions of the (unbiased) standard deviation over rows of the L2-normalised embeddings.

    .. math:: \frac{1}{D}\sum_k \mathrm{std}_i(\hat z_{ik})

    Args:
        x: ``(N, D)`` embeddings, ``N >= 2``.

    Returns:
        0-d fp32 tensor. 0 = collapsed to a point; ``~1/sqrt(D)`` (essentially its maximum) = healthy.
        Blind spot: collapse onto a random (not axis-aligned) subspace barely moves it.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import normalized_std
        >>> float(normalized_std(torch.ones(4, 3)))
        0.0

    Reference: Chen & He, "Exploring Simple Siamese Representation Learning" (SimSiam), CVPR 2021.
    """
    x = as_embeddings(x)
    return normalize_rows(x).std(dim=0, unbiased=True).mean()


def mean_cosine(x: torch.Tensor) -> torch.Tensor:
    r"""Mean cosine similarity over distinct pairs ``i != j``, exactly, in O(N D).

    .. math:: \frac{\lVert\sum_i \hat z_i\rVert^2 - \sum_i \lVert\hat z_i\rVert^2}{N(N-1)}

    Returns:
        0-d fp32 tensor in ``[-1/(N-1), 1]``: 1 = collapsed, ~0 = isotropic, ~0.3 typical of ReLU features.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import mean_cosine
        >>> round(float(mean_cosine(torch.ones(5, 3))), 4)
        1.0
    """
    x = as_embeddings(x)
    return mean_cosine_of_unit(normalize_rows(x))


def mean_cosine_of_unit(z: torch.Tensor) -> torch.Tensor:
    """:func:`mean_cosine` of rows already L2-normalised (``(N, D)``, ``N >= 2``; no checks)."""
    n = z.shape[0]
    s = z.sum(dim=0)
    return (s.dot(s) - z.pow(2).sum()) / (n * (n - 1))


def dead_dimensions(x: torch.Tensor, *, threshold: float = 1e-6) -> torch.Tensor:
    """Fraction of dimensions whose std over rows of the normalised embeddings is below ``threshold``.

    Returns a 0-d fp32 tensor in ``[0, 1]``; 0 healthy, 1 = every dimension constant (collapse).
    """
    x = as_embeddings(x)
    return (normalize_rows(x).std(dim=0, unbiased=True) < threshold).float().mean()


def nonfinite_fraction(x: torch.Tensor) -> torch.Tensor:
    """Fraction of entries that are NaN or +-Inf (0-d fp32 tensor in ``[0, 1]``; anything above 0 is a bug).

    Example:
        >>> import torch
        >>> from spherewatch.metrics import nonfinite_fraction
        >>> float(nonfinite_fraction(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])))
        0.25
    """
    x = as_embeddings(x, min_rows=1)
    return (~torch.isfinite(x)).float().mean()


def norm_stats(x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Statistics of the raw (pre-normalisation) row norms: ``norm_mean``, ``norm_std``, ``norm_min``, ``norm_max``.

    All spherewatch metrics normalise rows; these show a norm blow-up or shrink that normalisation hides.
    Non-finite rows are excluded (count them with :func:`nonfinite_fraction`); no finite row gives NaN.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import norm_stats
        >>> {k: float(v) for k, v in norm_stats(torch.tensor([[3.0, 4.0], [0.0, 1.0]])).items()}
        {'norm_mean': 3.0, 'norm_std': 2.8284270763397217, 'norm_min': 1.0, 'norm_max': 5.0}
    """
    x = as_embeddings(x, min_rows=1)
    return norm_stats_of_norms(torch.linalg.vector_norm(x, dim=1))


def norm_stats_of_norms(norms: torch.Tensor) -> Dict[str, torch.Tensor]:
    """:func:`norm_stats` from the row norms ``(N,)`` already computed. The sums run in fp64: norms near fp32's
    largest value (1e37 and up) would overflow an fp32 sum into a false ``inf``."""
    finite = torch.isfinite(norms)
    wide = norms.double()
    cnt = finite.sum().double()
    zero = torch.zeros_like(wide)
    mean = torch.where(finite, wide, zero).sum() / cnt
    var = torch.where(finite, (wide - mean) ** 2, zero).sum() / (cnt - 1).clamp(min=1)
    inf = torch.full_like(norms, float("inf"))
    return {
        "norm_mean": mean.to(norms.dtype),
        "norm_std": var.sqrt().to(norms.dtype),
        "norm_min": torch.where(finite, norms, inf).min(),
        "norm_max": torch.where(finite, norms, -inf).max(),
    }
