"""Label-aware within-class variability collapse NC1 (Papyan, Han & Donoho, 2020)."""
from __future__ import annotations

from typing import Optional

import torch

from spherewatch.metrics._validation import as_embeddings, normalize_rows

__all__ = ["nc1"]


def nc1(x: torch.Tensor, labels: torch.Tensor, *, num_classes: Optional[int] = None) -> torch.Tensor:
    r"""Within-class variability relative to between-class spread, on L2-normalised rows.

    .. math:: \mathrm{NC1} = \frac{1}{C}\,\mathrm{Tr}\big(\Sigma_W \Sigma_B^{+}\big)

    with ``Sigma_W = 1/N sum_c sum_{i in c} (z_i - mu_c)(z_i - mu_c)^T``, ``Sigma_B = 1/C sum_c (mu_c - mu_G)
    (mu_c - mu_G)^T`` (classes weighted equally, ``mu_G`` the mean of the class means), ``C`` the number of
    classes present and ``+`` the Moore-Penrose pseudo-inverse.

    Args:
        x: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer class labels in ``[0, num_classes)``.
        num_classes: number of classes. Pass it to avoid a host synchronisation (otherwise it is read from
            ``labels.max()``).

    Returns:
        0-d fp32 tensor. Small = tight, well separated classes (desired in supervised training; in
        self-supervised training it measures class separability); large = classes overlap.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import nc1
        >>> x = torch.tensor([[1., 0], [1, 0], [0, 1], [0, 1]])
        >>> float(nc1(x, torch.tensor([0, 0, 1, 1])))
        0.0

    Reference: Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep
    learning training", PNAS 2020.
    """
    x = as_embeddings(x)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"Expected `labels` to be a torch.Tensor of shape (N,), got {type(labels).__name__}.")
    if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"Expected `labels` of shape ({x.shape[0]},) to match the embeddings, got {tuple(labels.shape)}."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"Expected integer `labels`, got {labels.dtype}. Convert with `labels.long()`.")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if num_classes < 2:
        raise ValueError(f"NC1 needs at least 2 classes, got num_classes={num_classes}.")
    z = normalize_rows(x)
    n, d = z.shape
    labels = labels.to(z.device, torch.long)
    onehot = torch.zeros(n, num_classes, device=z.device, dtype=z.dtype)
    onehot.scatter_(1, labels.clamp(0, num_classes - 1).unsqueeze(1), 1.0)
    counts = onehot.sum(dim=0)
    present = counts > 0
    c_eff = present.sum().to(z.dtype)
    mu_c = (onehot.T @ z) / counts.clamp(min=1).unsqueeze(1)  # (C, D)
    mu_g = (mu_c * present.unsqueeze(1)).sum(dim=0) / c_eff
    within = z - onehot @ mu_c
    sigma_w = within.T @ within / n
    diff = (mu_c - mu_g) * present.unsqueeze(1)
    sigma_b = diff.T @ diff / c_eff
    pinv = torch.linalg.pinv(sigma_b, hermitian=True)
    return (sigma_w * pinv).sum() / c_eff
