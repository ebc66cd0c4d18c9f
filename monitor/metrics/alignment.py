"""Alignment of positive pairs (Wang & Isola, 2020)."""
from __future__ import annotations

import torch

from spherewatch.metrics._validation import as_pair, check_positive, normalize_rows

__all__ = ["alignment", "alignment_of_unit"]


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    r"""Mean distance between the normalised embeddings of positive pairs.

    .. math:: \mathcal{L}_{align} = \frac{1}{N}\sum_i \lVert \hat x_i - \hat y_i \rVert_2^{\alpha}

    Args:
        x: ``(N, D)`` embeddings of the first view.
        y: ``(N, D)`` embeddings of the second view; row ``i`` pairs with ``x[i]``.
        alpha: exponent, ``> 0`` (the paper uses 2).

    Returns:
        0-d fp32 tensor on the input's device.

    How to read it (``alpha=2``): range ``[0, 4]``; 0 = views map to the same point, 2 = unrelated views,
    4 = antipodal. Lower is better, but a collapsed encoder also scores 0: read it together with
    :func:`~spherewatch.metrics.uniformity`.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import alignment
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> float(alignment(x, x))
        0.0
        >>> float(alignment(x, -x))
        4.0

    Reference: Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere", ICML 2020.
    """
    alpha = check_positive(alpha, "alpha")
    x, y = as_pair(x, y)
    return alignment_of_unit(normalize_rows(x), normalize_rows(y), alpha)


def alignment_of_unit(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """:func:`alignment` of rows already L2-normalised (``(N, D)`` each, same dtype; no checks)."""
    sq = (x - y).pow(2).sum(dim=1)
    if alpha == 2.0:
        return sq.mean()
    return sq.pow(alpha / 2.0).mean()
