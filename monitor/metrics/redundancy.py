"""Cross-view redundancy: the off-diagonal part of the two views' cross-correlation (Barlow Twins' redundancy term)."""
from __future__ import annotations

import torch

from spherewatch.metrics._validation import as_pair

__all__ = ["redundancy", "redundancy_from_moments"]

#: A column whose standard deviation over the batch is at most this share of the batch's largest is constant
#: (a dead unit): it has no correlation with anything and is left out (``dead_dimensions`` reports it).
_DEAD_COLUMN = 1e-6
#: ... and so is a column whose standard deviation is at the rounding level of its own values (this many machine
#: epsilons of its mean's magnitude): a constant column's computed deviations are rounding noise, which the relative
#: rule cannot tell from signal when every column is constant (a completely collapsed batch).
_ROUNDING_EPS = 64


def _live(std: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The columns that vary: above both dead-column floors."""
    tiny = torch.finfo(std.dtype).tiny
    eps = torch.finfo(std.dtype).eps
    return (std > _DEAD_COLUMN * std.amax().clamp_min(tiny)) & (std > _ROUNDING_EPS * eps * mean.abs())


def redundancy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Mean squared off-diagonal entry of the cross-correlation matrix of two views' batch-standardised features.

    With :math:`a, b` the columns of ``x`` and ``y`` standardised over the batch (mean 0, biased std 1) and
    :math:`C = a^\top b / N` (Barlow Twins' cross-correlation, ``D x D``):

    .. math:: \mathrm{redundancy} = \frac{1}{D'(D'-1)} \sum_{i \ne j} C_{ij}^2

    over the :math:`D'` columns that vary in both views (a constant column, a dead unit, correlates with nothing and
    is left out). This is Barlow Twins' redundancy-reduction term, normalised: how much one feature of one view
    tells about the *other* features of the other view.

    Args:
        x: ``(N, D)`` embeddings of the first view (raw, not normalised: the features as the loss sees them).
        y: ``(N, D)`` embeddings of the second view; row ``i`` pairs with ``x[i]``.

    Returns:
        0-d tensor on the input's device (fp32; fp64 for fp64 input). Cost ``O(N D min(N, D))``: through the two
        ``N x N`` Grams when ``N < D``, else through ``C``. Memory: the two standardised views (as much as the
        input) and the ``min(N, D)``-sized product. No host synchronisation.

    How to read it: range ``[0, 1]``. Independent features give about ``1 / (N - 1)`` (the sampling floor of a
    squared correlation); 1 = every feature of one view is a linear function of every feature of the other, the
    completely redundant (collapsed) representation, which is also the value when fewer than two columns vary; NaN
    when an entry is NaN or infinite.
    Healthy Barlow Twins / VICReg runs hold a few times the floor; losing the redundancy term raises it several-fold
    within an evaluation. Contrastive and non-contrastive losses do not constrain it: compare a run with itself.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import redundancy
        >>> x = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 7.0]])
        >>> round(float(redundancy(x, x)), 4)  # the two features are almost the same feature
        0.9868
        >>> round(float(redundancy(x[:, :1].repeat(1, 3), x[:, :1].repeat(1, 3))), 4)  # three copies of one feature
        1.0

    Reference: Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021.
    """
    x, y = as_pair(x, y)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"Expected at least 2 rows to correlate features over the batch, got shape {tuple(x.shape)}.")
    if d < 2:
        raise ValueError(f"Expected at least 2 columns (an off-diagonal entry), got shape {tuple(x.shape)}.")
    a, live_a, finite_a = _standardise(x)
    b, live_b, finite_b = _standardise(y)
    live = live_a & live_b
    a.mul_(live)  # in place: the two standardised views are the only (N, D) copies made
    b.mul_(live)
    k = live.sum().to(a.dtype)
    if n < d:  # ||a^T b||_F^2 = <a a^T, b b^T>: the two N x N Grams
        total = (a @ a.T).mul_(b @ b.T).sum()
    else:
        total = (a.T @ b).square_().sum()
    diag = torch.einsum("nd,nd->d", a, b).square().sum()
    return _mean_off_diagonal((total - diag) / (n * n), k, finite_a & finite_b)


def _mean_off_diagonal(off: torch.Tensor, k: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """The sum ``off`` of the squared off-diagonal correlations of ``k`` varying columns as their mean; 1 (the
    collapsed value) when fewer than two columns vary, NaN when ``finite`` is false."""
    value = (off.clamp_min(0.0) / (k * (k - 1.0)).clamp_min(1.0)).clamp(max=1.0)
    # fewer than two varying columns: nothing decorrelated is left -- the collapsed value
    value = torch.where(k >= 2, value, torch.ones_like(value))
    return torch.where(finite, value, torch.full_like(value, float("nan")))


def _standardise(x: torch.Tensor):
    """Columns centred and divided by their biased std (one new ``(N, D)`` tensor); the ``(1, D)`` mask of the
    columns that vary; whether every entry is finite (read off the column means: a NaN or an infinity makes its
    column's mean non-finite, without an ``(N, D)`` mask)."""
    mean = x.mean(dim=0, keepdim=True)
    c = x - mean
    std = torch.linalg.vector_norm(c, dim=0, keepdim=True).div_(x.shape[0] ** 0.5)
    live = _live(std, mean)
    return c.div_(torch.where(live, std, torch.ones_like(std))), live, torch.isfinite(mean).all()


def redundancy_from_moments(cross: torch.Tensor, ss_x: torch.Tensor, ss_y: torch.Tensor, n: int,
                            mean_x: torch.Tensor, mean_y: torch.Tensor) -> torch.Tensor:
    """:func:`redundancy` from the two views' centred co-moments over ``n`` rows, summed over the rows (so that
    chunks of rows add up, ``spherewatch analyze`` streams them): ``cross`` ``(D, D)`` = sum of
    ``(x - mean_x)(y - mean_y)^T``, ``ss_x`` / ``ss_y`` ``(D,)`` = sums of squared deviations, ``mean_x`` /
    ``mean_y`` ``(D,)`` the column means. Same dead-column rules and conventions as :func:`redundancy` (equal to it,
    to round-off, on the rows the moments came from).

    Example:
        >>> import torch
        >>> x = torch.randn(100, 4, dtype=torch.float64)
        >>> xc = x - x.mean(0)
        >>> m = redundancy_from_moments(xc.T @ xc, (xc * xc).sum(0), (xc * xc).sum(0), 100, x.mean(0), x.mean(0))
        >>> bool(torch.isclose(m, redundancy(x, x)))
        True
    """
    d = cross.shape[0]
    shapes = (ss_x.shape, ss_y.shape, mean_x.shape, mean_y.shape)
    if cross.shape != (d, d) or any(sh != (d,) for sh in shapes) or d < 2 or n < 2:
        raise ValueError(f"Expected a (D, D) co-moment, (D,) sums of squares and means with D >= 2, and n >= 2 rows, "
                         f"got {tuple(cross.shape)}, {[tuple(sh) for sh in shapes]}, n={n}.")
    sx, sy = ss_x.clamp_min(0).sqrt(), ss_y.clamp_min(0).sqrt()
    live = _live(sx / n ** 0.5, mean_x) & _live(sy / n ** 0.5, mean_y)
    one = torch.ones_like(sx)
    corr = cross / torch.outer(torch.where(live, sx, one), torch.where(live, sy, one))
    corr = corr * torch.outer(live, live)
    off = corr.square().sum() - torch.diagonal(corr).square().sum()
    finite = torch.isfinite(cross).all() & torch.isfinite(ss_x).all() & torch.isfinite(ss_y).all()
    return _mean_off_diagonal(off, live.sum().to(corr.dtype), finite)
