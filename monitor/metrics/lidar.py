"""LiDAR: the effective rank of the LDA matrix of augmented views (Thilak et al., ICLR 2024)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spherewatch.metrics._linalg import eigh64, eigvalsh64, gram64
from spherewatch.metrics._validation import check_positive

__all__ = ["lidar"]


def _as_views(views: torch.Tensor) -> torch.Tensor:
    if not isinstance(views, torch.Tensor):
        raise TypeError(f"Expected `views` to be a torch.Tensor of shape (B, V, D), got {type(views).__name__}.")
    if views.ndim != 3:
        raise ValueError(
            f"Expected `views` to be a 3-D tensor (B, V, D) (B samples, V >= 2 views each), got shape "
            f"{tuple(views.shape)}. Stack the views with `torch.stack([z1, z2], dim=1)`."
        )
    if views.is_complex() or not views.is_floating_point():
        raise TypeError(f"Expected `views` to have a real floating dtype, got {views.dtype}. Convert with `.float()`.")
    b, v, d = views.shape
    if b < 2 or v < 2 or d < 1:
        raise ValueError(
            f"Expected at least 2 samples with at least 2 views each, got shape {tuple(views.shape)} (B, V, D)."
        )
    return views


def lidar(views: torch.Tensor, *, delta: float = 1e-4, eps: float = 0.0, normalize: bool = True) -> torch.Tensor:
    r"""LiDAR: effective rank of the linear-discriminant matrix, the views of one sample forming a surrogate class.

    .. math::

        \Sigma_b = \frac{1}{B-1}\sum_i (\mu_i - \mu)(\mu_i - \mu)^\top,\qquad
        \Sigma_w = \frac{1}{B(V-1)}\sum_i\sum_j (z_{ij} - \mu_i)(z_{ij} - \mu_i)^\top + \delta I,

        \mathrm{LiDAR} = \exp\Big(-\sum_k p_k \log p_k\Big),\quad
        p_k = \frac{\lambda_k + \epsilon}{\sum_l (\lambda_l + \epsilon)},\quad
        \lambda = \operatorname{eig}\big(\Sigma_w^{-1/2}\,\Sigma_b\,\Sigma_w^{-1/2}\big)

    with ``mu_i`` the mean of sample ``i``'s ``V`` views and ``mu`` the mean of those means (as in the paper and
    stable-pretraining's ``LiDAR`` callback). Computed in fp64: ``Sigma_w`` from an fp64 ``eigh`` (clamped at
    ``delta``), then the eigenvalues of ``Y Y^T`` with ``Y = Lambda_w^{-1/2} V_w^T A^T`` (``A`` the centred sample
    means), from the smaller of ``Y Y^T`` and ``Y^T Y`` (same non-zero eigenvalues).

    Args:
        views: ``(B, V, D)``: ``B >= 2`` samples, ``V >= 2`` augmented views of each, any float dtype.
        delta: ridge added to ``Sigma_w`` (default ``1e-4``, the paper's). It is absolute: it matters relative to
            the within-sample variance, so it acts differently on raw and on normalised rows.
        eps: added to every eigenvalue before normalising (the reference callback uses ``1e-8``). The default
            ``0`` uses ``0 log 0 = 0`` instead, so that a complete collapse (``Sigma_b = 0``) reads 1; with
            ``eps > 0`` it reads ``D`` (every ``p_k`` equal), which is wrong for a collapse monitor.
        normalize: L2-normalise every view first (the default, like every spherewatch metric).
            ``normalize=False, eps=1e-8`` is the reference callback on raw embeddings.

    Returns:
        0-d tensor (fp32; fp64 for fp64 input) on the input's device, in ``[1, min(B - 1, D)]`` (with ``eps=0``).
        The eigen-decompositions synchronise with the host on GPUs.

    How to read it: how many directions separate samples by more than their augmentations spread them. Higher =
    richer, linearly separable representation (it tracks linear-probe accuracy better than RankMe in the paper);
    1 = every sample looks the same (collapse); it is capped by ``B - 1``, so compare values at a fixed ``B``.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import lidar
        >>> means = torch.eye(4).repeat(2, 1) * torch.tensor([1.0] * 4 + [-1.0] * 4).unsqueeze(1)  # +-e_j
        >>> noise = 0.01 * torch.eye(4).repeat(2, 1)
        >>> views = torch.stack([means + noise, means - noise], dim=1)  # (8 samples, 2 views, D=4)
        >>> round(float(lidar(views, normalize=False)), 4)
        4.0

    Reference: Thilak et al., "LiDAR: Sensing Linear Probing Performance in Joint Embedding SSL Architectures",
    ICLR 2024.
    """
    views = _as_views(views)
    delta = check_positive(delta, "delta")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"Expected `eps` to be a number >= 0, got {eps!r}.")
    b, v, d = views.shape
    z = views.to(torch.float64)
    if normalize:
        z = F.normalize(z, p=2.0, dim=2, eps=1e-12)
    mu = z.mean(dim=1)  # (B, D)
    a = mu - mu.mean(dim=0)
    within = (z - mu.unsqueeze(1)).reshape(b * v, d)
    sigma_w = gram64(within) / (b * (v - 1)) + delta * torch.eye(d, dtype=torch.float64, device=z.device)
    lam_w, vec_w = eigh64(sigma_w)
    y = (vec_w.T @ a.T) / torch.sqrt(lam_w.clamp(min=delta)).unsqueeze(1)  # (D, B)
    small = y.T @ y if b < d else y @ y.T
    lam = eigvalsh64(small / (b - 1)).clamp(min=0)
    if eps > 0:
        # the reference adds eps to all D eigenvalues; the ones a B x B problem leaves out are exact zeros
        missing = max(d - lam.shape[0], 0)
        total = (lam + eps).sum() + missing * eps
        p = (lam + eps) / total
        h = -(p * torch.log(p)).sum() - (missing * (eps / total) * torch.log(eps / total) if missing else 0.0)
    else:
        total = lam.sum()
        p = lam / torch.where(total > 0, total, torch.ones_like(total))
        h = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p)).sum()
    return torch.exp(h).to(torch.float64 if views.dtype == torch.float64 else torch.float32)
