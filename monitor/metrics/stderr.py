"""Standard error of a metric from disjoint row blocks (batch means), on device and without a host sync."""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["block_stderr", "stderr_of_blocks"]


def block_stderr(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    *,
    blocks: int = 8,
    min_rows: int = 4,
) -> Optional[torch.Tensor]:
    r"""Standard error of ``fn`` over the rows of ``x`` estimated from ``blocks`` disjoint row blocks.

    The rows are split into ``B = blocks`` interleaved blocks (row ``i`` goes to block ``i mod B``, so rows taken
    from consecutive batches are mixed), ``fn`` is evaluated on each block and

    .. math:: \mathrm{se} = \frac{\mathrm{sd}(m_1, \dots, m_B)}{\sqrt{B}}

    (the batch-means estimate: a statistic whose variance falls like ``1/N`` has ``Var(full) ~ Var(block) / B``).
    It is the sampling error of the value at the rows used: how much the metric would move if another sample of
    the same model's embeddings were taken. It does not include how the model itself moves between evaluations.

    Args:
        fn: metric ``fn(x)`` or ``fn(x, y)`` returning a 0-d tensor.
        x: ``(N, D)`` rows.
        y: optional paired rows ``(N, D)`` (split with the same blocks).
        blocks: number of blocks ``B >= 2``.
        min_rows: minimum rows per block; with fewer rows in total ``None`` is returned (no estimate).

    Returns:
        a 0-d fp32 tensor on ``x``'s device, or ``None`` when there are fewer than ``blocks * min_rows`` rows.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import mean_cosine
        >>> se = block_stderr(mean_cosine, torch.randn(512, 16, generator=torch.Generator().manual_seed(0)))
        >>> 0.0 < float(se) < 0.01
        True
    """
    if blocks < 2:
        raise ValueError(f"Expected `blocks` >= 2, got {blocks}.")
    n = x.shape[0]
    if n < blocks * max(int(min_rows), 2):
        return None
    values = []
    for b in range(blocks):
        xb = x[b::blocks]
        values.append(fn(xb) if y is None else fn(xb, y[b::blocks]))
    return stderr_of_blocks(torch.stack([v.float() for v in values]))


def stderr_of_blocks(values: torch.Tensor) -> torch.Tensor:
    """The batch-means standard error ``sd(m_1..m_B) / sqrt(B)`` of ``B >= 2`` block values ``(B,)`` (fp32)."""
    values = values.float()
    return values.std(unbiased=True) / (values.shape[0] ** 0.5)
