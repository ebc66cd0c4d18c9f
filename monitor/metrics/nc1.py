"""Label-aware within-class variability collapse NC1 (Papyan, Han & Donoho, 2020)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from spherewatch.metrics._linalg import eigh64
from spherewatch.metrics._validation import as_embeddings

__all__ = ["nc1"]


def nc1(x: torch.Tensor, labels: torch.Tensor, *, num_classes: Optional[int] = None) -> torch.Tensor:
    r"""Within-class variability relative to between-class spread, on L2-normalised rows.

    .. math:: \mathrm{NC1} = \frac{1}{C}\,\mathrm{Tr}\big(\Sigma_W \Sigma_B^{+}\big)

    with ``Sigma_W = 1/N sum_c sum_{i in c} (z_i - mu_c)(z_i - mu_c)^T``, ``Sigma_B = 1/C sum_c (mu_c - mu_G)
    (mu_c - mu_G)^T`` (classes weighted equally, ``mu_G`` the mean of the class means), ``C`` the number of
    classes present and ``+`` the pseudo-inverse on the top ``C - 1`` eigenpairs of ``Sigma_B`` (its rank is at
    most ``C - 1``; Papyan/Han use ``svds(k=C-1)``). Everything is accumulated in fp64: ``pinv``'s default
    relative cut in fp32 (``D * eps``) drops a small between-class direction, and two nearly coincident classes
    then read ~1e-5 ("perfectly separated") instead of the formula's 0.365.

    Args:
        x: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer class labels in ``[0, num_classes)``.
        num_classes: number of classes. Pass it to avoid a host synchronisation (otherwise it is read from
            ``labels.max()``, one ``.item()``). The eigen-decomposition's result is checked on the host either way
            (one sync; see :class:`~spherewatch.metrics.DecompositionFallbackWarning`).

    Returns:
        0-d fp32 tensor (fp64 for fp64 input) on the input's device. Small = tight, well separated classes
        (desired in supervised training; in self-supervised training it measures class separability); large =
        classes overlap.

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
    z = F.normalize(x.to(torch.float64), p=2.0, dim=1, eps=1e-12)  # fp64 throughout: Sigma_B is ill-conditioned
    n, d = z.shape
    labels = labels.to(z.device, torch.long)
    onehot = torch.zeros(n, num_classes, device=z.device, dtype=z.dtype)
    onehot.scatter_(1, labels.clamp(0, num_classes - 1).unsqueeze(1), 1.0)
    counts = onehot.sum(dim=0)
    present = counts > 0
    c_eff = present.sum().to(z.dtype)
    mu_c = (onehot.T @ z) / counts.clamp(min=1).unsqueeze(1)  # (C, D)
    mu_g = (mu_c * present.unsqueeze(1)).sum(dim=0) / c_eff
    within = z - onehot @ mu_c  # (N, D)
    diff = (mu_c - mu_g) * present.unsqueeze(1)  # (C, D); absent classes are zero rows
    # Sigma_B = diff^T diff / C has rank <= C - 1: its non-zero eigenpairs from the smaller of the D x D and the
    # C x C Gram (same eigenvalues; v_k = diff^T u_k / sqrt(C lambda_k)), inverted on the top C - 1 only.
    if num_classes <= d:
        lam, u = eigh64(diff @ diff.T / c_eff)
        vec = diff.T @ u / torch.sqrt((c_eff * lam).clamp(min=torch.finfo(z.dtype).tiny))
    else:
        lam, vec = eigh64(diff.T @ diff / c_eff)
    m = lam.shape[0]
    from_top = torch.arange(m - 1, -1, -1, device=z.device)  # eigh is ascending
    tiny = m * torch.finfo(z.dtype).eps * lam.max().clamp(min=0)  # an exact zero of a rank-deficient Sigma_B
    keep = (from_top < c_eff - 1) & (lam > tiny)
    proj = (within @ vec).pow(2).sum(dim=0) / n  # v_k^T Sigma_W v_k
    terms = torch.where(keep, proj / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    out = terms.sum() / c_eff
    return out.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
