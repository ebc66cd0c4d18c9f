"""Uniformity on the hypersphere (Wang & Isola, 2020): exact blocked kernel and a pooled estimator."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from spherewatch.metrics._validation import as_embeddings, check_positive, normalize_rows

__all__ = ["uniformity", "uniformity_estimate", "UniformityEstimate", "EXACT_MAX_ROWS", "uniformity_of_unit"]

#: ``method="auto"`` computes the exact value up to this many rows and the pooled estimator above it.
EXACT_MAX_ROWS = 16384
# Extra memory of the exact kernel is about 4 * _BLOCK_ELEMENTS bytes (one block of Gram rows).
_BLOCK_ELEMENTS = 4 * 1024 * 1024


class UniformityEstimate(NamedTuple):
    """Pooled uniformity estimate with its standard error (both 0-d tensors)."""

    value: torch.Tensor
    stderr: torch.Tensor


def _block_rows(n: int, block_size: Optional[int]) -> int:
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"Expected `block_size` to be a positive int, got {block_size!r}.")
        return block_size
    # at most max(256, N/8) rows: the blocks then cover little more than the i<j half of the square (~56%) and
    # stay cache-sized; one N x N block was 2.3x slower at N=2048, D=128 (benchmarks/scale.py)
    return max(32, min(n, _BLOCK_ELEMENTS // max(n, 1), max(256, n // 8)))


def _acc_dtype(device: torch.device) -> torch.dtype:
    # fp64 accumulation of the (few) partial sums; MPS has no fp64.
    return torch.float32 if device.type == "mps" else torch.float64


def _upper_kernel_sum(z: torch.Tensor, t: float, block_size: Optional[int]) -> torch.Tensor:
    """Sum over i<j of exp(-t ||z_i - z_j||^2) for rows of norm 1 or 0; O(N * block) extra memory.

    ``-t ||z_i - z_j||^2 = (2t z_i.z_j - t s_j - t) + t (1 - s_i)`` with ``s = ||z||^2``. One ``addmm`` per
    block of rows ``[a, b)`` against the columns ``[a, N)`` (the upper half only) gives the bracket, which is
    ``<= 0`` for unit and zero rows alike, so the in-place ``exp`` never overflows; the row factor
    ``exp(t (1 - s_i))`` is applied to the fp32 row sums. Exact for zero rows (they sit at the origin).
    """
    return _kernel_sums(z, t, block_size, 0)[0]


def pair_kernel_sum(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Sum over pairs ``i < j`` of ``exp(-t ||z_i - z_j||^2)`` for rows already L2-normalised (norm 1, or 0 for a
    degenerate row): the building block of a streamed uniformity (``spherewatch analyze`` adds each chunk's sum).
    0-d fp32 tensor on ``z``'s device; ``log(sum / (N (N - 1) / 2))`` is :func:`uniformity`.

    Example:
        >>> z = torch.eye(3)
        >>> round(float(pair_kernel_sum(z, t=2.0)), 4) == round(3 * math.exp(-4.0), 4)
        True
    """
    return _upper_kernel_sum(z, t, None)


def _kernel_sums(z: torch.Tensor, t: float, block_size: Optional[int], groups: int):
    """``(total, within)``: :func:`_upper_kernel_sum` of all rows, and (``groups >= 2``) the ``(groups,)`` sums over
    the pairs ``i < j`` inside each interleaved group of rows (row ``i`` in group ``i mod groups``, the blocks of
    :func:`~spherewatch.metrics.stderr.block_stderr`), read from the same kernel blocks (``None`` otherwise).
    ``total`` is computed exactly as without groups."""
    n = z.shape[0]
    bs = _block_rows(n, block_size)
    sq = z.pow(2).sum(dim=1)
    col_bias = (-t * sq - t).unsqueeze(0)  # (1, N)
    acc = _acc_dtype(z.device)
    partials = []
    within = torch.zeros(groups, dtype=acc, device=z.device) if groups >= 2 else None
    for a in range(0, n, bs):
        b = min(a + bs, n)
        g = torch.addmm(col_bias[:, a:], z[a:b], z[a:].T, beta=1.0, alpha=2.0 * t)  # (b-a, n-a)
        g.exp_()
        w = b - a
        rows = torch.triu(g[:, :w], diagonal=1).sum(dim=1)
        if n > b:
            rows = rows + g[:, w:].sum(dim=1)
        weight = torch.exp(t * (1.0 - sq[a:b]))
        partials.append((rows.to(acc) * weight.to(acc)).sum())
        if within is not None:
            for r in range(min(groups, w)):  # local rows r, r + groups, ... against the columns of their group
                same = torch.triu(g[r::groups, r::groups], diagonal=1).sum(dim=1)
                within[(a + r) % groups] += (same.to(acc) * weight[r::groups].to(acc)).sum()
    return torch.stack(partials).sum(), within


def uniformity_of_unit(z: torch.Tensor, t: float, *, blocks: int = 0):
    """``(value, block_values)``: exact :func:`uniformity` of already L2-normalised (or zero) rows ``z`` (N >= 2),
    and with ``blocks >= 2`` the uniformity of each interleaved block ``z[b::blocks]`` (``(blocks,)``, for the
    batch-means standard error) from the same kernel pass; ``None`` without blocks. ``value`` equals
    ``uniformity(x, t, method="exact")`` for ``z = normalize_rows(x)``."""
    n = z.shape[0]
    total, within = _kernel_sums(z, t, None, blocks)
    value = torch.log(total / (n * (n - 1) / 2.0)).to(z.dtype)
    if within is None:
        return value, None
    sizes = torch.full((blocks,), n // blocks, dtype=within.dtype, device=z.device)  # made on the device: no copy
    sizes[: n % blocks] += 1
    pairs = sizes * (sizes - 1) / 2.0
    return value, torch.log(within / pairs).to(z.dtype)


def uniformity(
    x: torch.Tensor,
    t: float = 2.0,
    *,
    method: str = "auto",
    block_size: Optional[int] = None,
    chunk_size: int = 2048,
    seed: int = 0,
) -> torch.Tensor:
    r"""Log of the mean Gaussian potential between distinct normalised embeddings.

    .. math:: \mathcal{L}_{uniform} = \log \frac{2}{N(N-1)} \sum_{i<j} e^{-t \lVert \hat x_i - \hat x_j \rVert_2^2}

    Pairs ``i < j`` only, like the reference ``uniform_loss`` (``torch.pdist``); the diagonal is excluded
    (including it biases the value upward by ``log(1/N + (1 - 1/N) m)``).

    Args:
        x: ``(N, D)`` embeddings, ``N >= 2``; any float dtype (computed in fp32).
        t: kernel scale, ``> 0`` (the paper uses 2).
        method: ``"exact"`` (all pairs, blocked, extra memory ``O(N * block)``), ``"pooled"`` (the estimator of
            :func:`uniformity_estimate`, for very large N) or ``"auto"`` (exact up to ``EXACT_MAX_ROWS`` rows).
        block_size: rows per block of the exact kernel (default: ``max(256, N // 8)`` rows, at most about 4M Gram
            entries, i.e. 16 MB, per block).
        chunk_size: rows per chunk of the pooled estimator.
        seed: seed of the row permutation used by the pooled estimator.

    Returns:
        0-d tensor on the input's device (fp32; fp64 for fp64 input).

    How to read it (``t=2``): lower is more uniform. 0 = complete collapse (all rows equal);
    ``-2t = -4`` is the large-``d`` limit of i.i.d. uniform points; a collapse onto a ``k``-dim subspace
    reads as the value of ``S^{k-1}`` (e.g. -1.575 for a circle, -2.080 for ``S^2``). Rising toward 0 during
    training means the embeddings are losing spread.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import uniformity
        >>> float(uniformity(torch.ones(8, 4)))  # complete collapse
        0.0
        >>> tetra = torch.tensor([[1., 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
        >>> round(float(uniformity(tetra)), 4)  # -16/3
        -5.3333

    Reference: Wang & Isola, ICML 2020.
    """
    t = check_positive(t, "t")
    x = as_embeddings(x)
    if method not in ("auto", "exact", "pooled"):
        raise ValueError(f"Unknown uniformity `method` {method!r}; use one of: 'auto', 'exact', 'pooled'.")
    n = x.shape[0]
    if method == "pooled" or (method == "auto" and n > EXACT_MAX_ROWS):
        return uniformity_estimate(x, t, chunk_size=chunk_size, seed=seed).value
    z = normalize_rows(x)
    total = _upper_kernel_sum(z, t, block_size)
    return torch.log(total / (n * (n - 1) / 2.0)).to(z.dtype)


def uniformity_estimate(
    x: torch.Tensor, t: float = 2.0, *, chunk_size: int = 2048, seed: int = 0
) -> UniformityEstimate:
    r"""Pooled within-chunk estimate of :func:`uniformity` for very large N, with its standard error.

    Rows are permuted (seeded, so the estimate is reproducible and independent of row order) and split into
    ``B`` chunks of ``m = chunk_size`` rows; the kernel mean is estimated from the ``B * m(m-1)/2`` pairs inside
    chunks instead of all ``N(N-1)/2`` pairs. Cost ``O(N m D)`` time and ``O(m^2 + m D + N)`` extra memory (rows are
    normalised chunk by chunk; a half-precision input is first converted to fp32), so N = 10^6 rows is fine.

    Standard error: chunk means ``k_b`` are independent given the rows, so
    ``se(mean) = sd(k_b) / sqrt(B)`` and, by the delta method, ``se(log mean) = se(mean) / mean``.
    It describes the estimator's spread around the all-pairs value of the same rows' distribution.
    On i.i.d. uniform data the within-batch estimator's error falls like ``1/N``; on anisotropic, real
    embeddings like ``1/sqrt(N)`` (METRICS.md). With a single chunk (``N <= chunk_size``) the result is exact
    and ``stderr`` is 0.

    Args:
        x: ``(N, D)`` embeddings, ``N >= 2``.
        t: kernel scale, ``> 0``.
        chunk_size: rows per chunk (``>= 2``); larger is more accurate and costs ``O(chunk_size^2)`` memory.
        seed: seed of the row permutation (a CPU generator; no host sync on accelerators).

    Returns:
        ``UniformityEstimate(value, stderr)``, 0-d tensors on the input's device.

    Example:
        >>> import torch
        >>> from spherewatch.metrics import uniformity_estimate
        >>> est = uniformity_estimate(torch.randn(10_000, 16), chunk_size=1000)
        >>> bool(est.stderr < 0.05)
        True
    """
    t = check_positive(t, "t")
    x = as_embeddings(x)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 2:
        raise ValueError(f"Expected `chunk_size` to be an int >= 2, got {chunk_size!r}.")
    n = x.shape[0]
    if n <= chunk_size:
        total = _upper_kernel_sum(normalize_rows(x), t, None)
        value = torch.log(total / (n * (n - 1) / 2.0)).to(x.dtype)
        return UniformityEstimate(value, torch.zeros((), dtype=x.dtype, device=x.device))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    perm = torch.randperm(n, generator=gen).to(x.device, non_blocking=True)
    n_chunks = n // chunk_size  # the last partial chunk is folded into the previous one
    # chunk sums go into one preallocated tensor: hundreds of small long-lived tensors interleaved with the
    # 16 MB kernel blocks fragment glibc's heap (measured: +4 GB RSS at N = 10^6 with a Python list)
    sums_t = torch.empty(n_chunks, dtype=_acc_dtype(x.device), device=x.device)
    pairs = []
    for b in range(n_chunks):
        a = b * chunk_size
        e = n if b == n_chunks - 1 else a + chunk_size
        zc = normalize_rows(x.index_select(0, perm[a:e]))  # chunk by chunk: no normalised copy of all N rows
        m = e - a
        sums_t[b] = _upper_kernel_sum(zc, t, None)
        pairs.append(m * (m - 1) / 2.0)
    pairs_t = torch.tensor(pairs, dtype=_acc_dtype(x.device)).to(x.device, non_blocking=True)
    means = sums_t / pairs_t
    mean = sums_t.sum() / pairs_t.sum()
    se_mean = means.std(unbiased=True) / math.sqrt(n_chunks) if n_chunks > 1 else torch.zeros_like(mean)
    value = torch.log(mean)
    stderr = se_mean / mean
    return UniformityEstimate(value.to(x.dtype), stderr.to(x.dtype))
