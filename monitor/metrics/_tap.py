"""The rows of one tap at one evaluation, prepared once, and the pieces the metrics share.

:class:`TapRows` holds what every metric of an evaluation reads: the rows with their degenerate rows made one point
(:func:`one_point`), their L2-normalised form, the column standard deviations (``normalized_std`` and
``dead_dimensions``), the mask of finite rows, the rows the decompositions see (non-finite rows zeroed), the
paired views and the uniformity kernel with its block values. Each piece is computed on first use and kept for the
evaluation; :mod:`spherewatch.compute` evaluates the catalogue's metrics on it (inside
:func:`~spherewatch.metrics._shared.shared_work`, so the decompositions share their Grams as well).
"""
from __future__ import annotations

from functools import cached_property
from typing import Dict, Optional, Tuple

import torch

from spherewatch.metrics._shared import remember
from spherewatch.metrics.uniformity import EXACT_MAX_ROWS, uniformity, uniformity_of_unit

__all__ = ["NORM_FLOOR", "SPREAD_FLOOR", "TapRows", "RowPass", "one_point", "unit_rows"]

#: Rows with an L2 norm at most this (absolute) are degenerate: all treated as one point.
NORM_FLOOR = 1e-6
#: A spectrum of L2-normalised rows whose eigenvalues sum to at most this has every dimension collapsed.
SPREAD_FLOOR = 1e-8


def one_point(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x`` in fp32 with its degenerate rows (finite norm <= NORM_FLOOR) replaced by one fixed unit vector, and
    the mask of those rows ``(N, 1)``.

    Example:
        >>> import torch
        >>> z, tiny = one_point(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        >>> z.tolist(), tiny.flatten().tolist()
        ([[0.7071067690849304, 0.7071067690849304], [3.0, 4.0]], [True, False])
    """
    x = x.float()
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    tiny = norms <= NORM_FLOOR  # NaN/Inf rows compare False: they are the nonfinite rule's business
    point = torch.full((1, x.shape[1]), x.shape[1] ** -0.5, dtype=x.dtype, device=x.device)
    return torch.where(tiny, point, x), tiny


def _chunk(n: int, d: int, device: torch.device) -> int:
    """Rows per chunk of the row passes: ~4 MB on the CPU (temporaries stay in cache and are reused instead of
    being faulted in afresh), everything at once on accelerators (one launch per op)."""
    return n if device.type != "cpu" else max(64, (1 << 20) // max(d, 1))


def unit_rows(x: torch.Tensor, *, nonfinite: bool = True) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One pass over ``x`` ``(N, D)``: ``(u, norms, nonfinite)`` -- the fp32 rows L2-normalised with degenerate rows
    made one point (equal to ``normalize_rows(one_point(x)[0])``), the fp32 row norms ``(N, 1)`` of ``x`` and the
    number of NaN/Inf entries of each row ``(N,)`` (int64; ``None`` when not ``nonfinite``). No host sync.

    Example:
        >>> import torch
        >>> u, norms, bad = unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0], [float("nan"), 1.0]]))
        >>> u[0].tolist(), norms[0].item(), bad.tolist()
        ([0.6000000238418579, 0.800000011920929], 5.0, [0, 0, 1])
    """
    n, d = x.shape
    dev = x.device
    u = torch.empty(n, d, dtype=torch.float32, device=dev)
    norms = torch.empty(n, 1, dtype=torch.float32, device=dev)
    unit_point = _unit_point(d, dev)
    step = _chunk(n, d, dev)
    for a in range(0, n, step):
        b = min(a + step, n)
        norms[a:b] = _unit_chunk(x[a:b], unit_point, u[a:b])
    return u, norms, _nonfinite_per_row(x, norms) if nonfinite else None


def pow2_row_scale(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1)``: a power of two near the largest magnitude of each row whose entries reach ``2**50``, else 1.

    Dividing by it is exact, and so is the norm of the result times it: rows of finite entries up to fp32's
    largest (3.4e38), whose sum of squares overflows, keep their direction and an honest norm (``inf`` only when
    the norm itself exceeds fp32's range), instead of reading as zero rows (``x / inf``), i.e. as collapse.
    """
    amax = x.abs().amax(dim=1, keepdim=True)
    big = (amax > 2.0 ** 50) & torch.isfinite(amax)
    return torch.where(big, torch.exp2(torch.floor(torch.log2(amax.clamp_min(1.0)))), torch.ones_like(amax))


def _unit_chunk(x: torch.Tensor, unit_point: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write the L2-normalised rows of ``x`` (degenerate rows: the unit point) into ``out``; return their norms."""
    xf = x.float()
    nc = torch.linalg.vector_norm(xf, dim=1, keepdim=True)
    if _cpu_any(~torch.isfinite(nc)) is not False:  # an overflowing sum of squares (on accelerators: always checked)
        scale = pow2_row_scale(xf)
        xf = xf / scale
        nc = torch.linalg.vector_norm(xf, dim=1, keepdim=True) * scale
        denom = torch.linalg.vector_norm(xf, dim=1, keepdim=True)
        tiny = nc <= NORM_FLOOR
        denom = torch.where(tiny, torch.full_like(denom, float("inf")), denom.clamp_min(1e-12))
        torch.div(xf, denom, out=out).add_(tiny.to(torch.float32) * unit_point)
        return nc
    tiny = nc <= NORM_FLOOR  # NaN/Inf rows compare False
    # x / |x| (as F.normalize: bit for bit), and the unit point for degenerate rows (x / inf = 0 there)
    denom = torch.where(tiny, torch.full_like(nc, float("inf")), nc.clamp_min(1e-12))
    torch.div(xf, denom, out=out).add_(tiny.to(torch.float32) * unit_point)  # 4x faster than one addcdiv here
    return nc


def _unit_point(d: int, device: torch.device) -> torch.Tensor:
    """0-d: each entry of the L2-normalised one point (:func:`one_point`) of dimension ``d``."""
    point = torch.full((1, d), d ** -0.5, dtype=torch.float32, device=device)
    return (point / torch.linalg.vector_norm(point, dim=1, keepdim=True).clamp_min(1e-12))[0, 0]


def _cpu_any(mask: torch.Tensor) -> Optional[bool]:
    """``bool(mask.any())`` for a CPU tensor (free there), ``None`` on accelerators (it would synchronise)."""
    return bool(mask.any()) if mask.device.type == "cpu" else None


def _nonfinite_per_row(x: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64: NaN/Inf entries in each row of ``x``. A row holding one has a non-finite norm, so on the CPU
    only rows with a non-finite norm are counted (usually none); elsewhere every row, without a host sync."""
    suspect = ~torch.isfinite(norms.flatten())
    if _cpu_any(suspect) is False:
        return torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    out = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    step = _chunk(x.shape[0], x.shape[1], x.device)
    for a in range(0, x.shape[0], step):
        out[a:a + step] = torch.count_nonzero(x[a:a + step] * 0, dim=1)  # x * 0 is NaN where x is NaN or +-Inf
    return out


class RowPass:
    """One chunked pass over the rows ``x`` ``(N, D)`` (and their paired view ``pos``) that computes what the
    O(N D) metrics read, without keeping the normalised rows (each chunk is normalised, used and dropped while it is
    in cache):

    * ``norms`` ``(N, 1)`` fp32 row norms of ``x``, ``nonfinite`` ``(N,)`` NaN/Inf entries per row;
    * ``row_sq`` ``(N,)`` squared norms of the normalised rows, ``pair_sq`` ``(N,)`` squared distances to the
      normalised paired view (``None`` without one);
    * column statistics of the normalised rows and of their interleaved row blocks ``b::blocks`` (the batch-means
      blocks of :func:`~spherewatch.metrics.stderr.block_stderr`): ``block_sums``, ``block_std`` ``(B, D)``,
      ``counts`` ``(B,)``, and ``std`` ``(D,)`` over all rows (unbiased; sums around a shift -- the first chunk's
      column mean -- so nothing cancels near collapse). ``blocks`` is 1 below ``4 * blocks`` rows.
    """

    def __init__(self, x: torch.Tensor, pos: Optional[torch.Tensor] = None, blocks: int = 8) -> None:
        n, d = x.shape
        dev = x.device
        if n < 4 * blocks:
            blocks = 1
        self.blocks = blocks
        step = max(blocks, _chunk(n, d, dev) // blocks * blocks)  # whole periods of blocks: row i -> block i % B
        unit_point = _unit_point(d, dev)
        self.norms = torch.empty(n, 1, dtype=torch.float32, device=dev)
        self.row_sq = torch.empty(n, dtype=torch.float32, device=dev)
        self.pair_sq = None if pos is None else torch.empty(n, dtype=torch.float32, device=dev)
        buf = torch.empty(min(step, n), d, dtype=torch.float32, device=dev)
        pbuf = None if pos is None else torch.empty_like(buf)
        sums = torch.zeros(blocks, d, dtype=torch.float32, device=dev)
        squares = torch.zeros(blocks, d, dtype=torch.float32, device=dev)
        shift = torch.zeros(d, dtype=torch.float32, device=dev)
        for a in range(0, n, step):
            b = min(a + step, n)
            uc = buf[: b - a]
            self.norms[a:b] = _unit_chunk(x[a:b], unit_point, uc)
            self.row_sq[a:b] = torch.linalg.vector_norm(uc, dim=1).square()
            if pos is not None:
                pc = pbuf[: b - a]
                _unit_chunk(pos[a:b], unit_point, pc)
                self.pair_sq[a:b] = (uc - pc).pow_(2).sum(dim=1)
            if a == 0:
                shift = uc.mean(dim=0)
            dc = uc - shift
            k, r = divmod(b - a, blocks)
            head = dc[: k * blocks].view(k, blocks, d)
            sums += head.sum(dim=0)
            squares += head.square_().sum(dim=0)
            if r:  # the last chunk's incomplete period
                tail = dc[k * blocks:]
                sums[:r] += tail
                squares[:r] += tail.square()
        counts = torch.full((blocks,), n // blocks, dtype=torch.float32, device=dev)
        counts[: n % blocks] += 1
        m = counts.unsqueeze(1)
        self.counts = counts
        self.block_sums = sums + m * shift
        self.block_std = ((squares - sums.square() / m).clamp(min=0) / (m - 1).clamp(min=1)).sqrt()
        total = sums.sum(dim=0)
        self.std = ((squares.sum(dim=0) - total.square() / max(n, 1)).clamp(min=0) / max(n - 1, 1)).sqrt()
        self.nonfinite = _nonfinite_per_row(x, self.norms)


class TapRows:
    """One tap's rows at one evaluation: ``raw`` ``(N, D)``, the other views ``raw_pos`` (``(N, D)`` or
    ``(N, V - 1, D)``, or ``None``) and ``labels``, with every derived piece computed once on first use.

    Example:
        >>> import torch
        >>> tap = TapRows(torch.randn(64, 8), None, None)
        >>> tap.u is tap.u, tuple(tap.col_std.shape)
        (True, (8,))
    """

    def __init__(self, raw: torch.Tensor, raw_pos: Optional[torch.Tensor], labels: Optional[torch.Tensor], *,
                 t: float = 2.0, alpha: float = 2.0, num_classes: Optional[int] = None) -> None:
        self.raw, self.raw_pos, self.labels = raw, raw_pos, labels
        self.t, self.alpha, self.num_classes = t, alpha, num_classes
        self.n, self.d = raw.shape[0], raw.shape[1]
        #: values of the metrics evaluated so far (``spectrum`` is read by ``collapsed_dimensions``, ``alpha_req``)
        self.values: Dict[str, object] = {}

    @cached_property
    def _point(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return one_point(self.raw)

    @property
    def z(self) -> torch.Tensor:
        """fp32 rows, degenerate rows made one point."""
        return self._point[0]

    @property
    def tiny(self) -> torch.Tensor:
        """``(N, 1)`` mask of the degenerate rows (finite norm <= NORM_FLOOR)."""
        return self.norms <= NORM_FLOOR

    @cached_property
    def columns(self) -> RowPass:
        """The one pass over the rows (and the paired view): norms, non-finite entries, column statistics of the
        normalised rows and of their 8 interleaved row blocks, row and pair distances."""
        return RowPass(self.raw, self.raw_zp, 8)

    @cached_property
    def u(self) -> torch.Tensor:
        """The rows (degenerate rows made one point) L2-normalised, fp32 (NaN rows stay NaN); computed only for the
        metrics that read every normalised row (uniformity, the decompositions)."""
        return unit_rows(self.raw, nonfinite=False)[0]

    @property
    def norms(self) -> torch.Tensor:
        """``(N, 1)`` fp32 L2 norms of the raw rows."""
        return self.columns.norms

    @cached_property
    def nonfinite_fraction(self) -> torch.Tensor:
        """0-d fp32: share of the raw entries that are NaN or +-Inf."""
        return (self.columns.nonfinite.sum().float() / float(self.n * self.d)).float()

    @property
    def col_std(self) -> torch.Tensor:
        """``(D,)`` unbiased standard deviation over rows of the normalised rows."""
        return self.columns.std

    @property
    def row_sq(self) -> torch.Tensor:
        """``(N,)`` squared L2 norms of the normalised rows (1, or 0 for zero rows, NaN for non-finite ones)."""
        return self.columns.row_sq

    @cached_property
    def finite_rows(self) -> torch.Tensor:
        """``(N, 1)``: rows without NaN/Inf."""
        return (self.columns.nonfinite == 0).unsqueeze(1)

    @cached_property
    def any_bad(self) -> torch.Tensor:
        """0-d bool: some row is non-finite (the decompositions then report NaN; no host sync)."""
        return ~self.finite_rows.all()

    @cached_property
    def z_spec(self) -> torch.Tensor:
        """The rows the decompositions see: non-finite rows zeroed (LAPACK refuses them); their normalised form is
        handed on to the shared scope, so it is not recomputed."""
        tiny, finite = self.tiny, self.finite_rows
        if _cpu_any(tiny) is False and _cpu_any(~finite) is False:  # nothing to replace (CPU: a free check)
            zs = self.raw.float()
            remember(zs, "unit", self.u)
            return zs
        # one pass: the row itself, the one point (degenerate rows) or zeros (non-finite rows)
        fill = tiny.to(torch.float32) * (self.d ** -0.5)
        zs = torch.where(finite & ~tiny, self.raw.float(), fill)
        remember(zs, "unit", lambda: torch.where(finite, self.u, torch.zeros_like(self.u)))
        return zs

    @cached_property
    def views(self) -> Optional[torch.Tensor]:
        """The other views of each row, ``(N, V - 1, D)``, degenerate rows made one point; ``None`` without."""
        if self.raw_pos is None:
            return None
        pos = self.raw_pos if self.raw_pos.ndim == 3 else self.raw_pos.unsqueeze(1)
        return one_point(pos.flatten(0, 1))[0].reshape(pos.shape)

    @property
    def raw_zp(self) -> Optional[torch.Tensor]:
        """The paired view (view 1) of each row as given, ``(N, D)``; ``None`` without."""
        if self.raw_pos is None:
            return None
        return self.raw_pos if self.raw_pos.ndim == 2 else self.raw_pos[:, 0]

    @cached_property
    def zp(self) -> torch.Tensor:
        """The paired view (view 1) of each row, ``(N, D)``."""
        return self.views[:, 0]

    @cached_property
    def up(self) -> torch.Tensor:
        """The paired view (degenerate rows made one point) L2-normalised."""
        return unit_rows(self.raw_zp)[0]

    @property
    def pair_sq(self) -> torch.Tensor:
        """``(N,)`` squared distances between the normalised rows and their paired view."""
        return self.columns.pair_sq

    def uniformity(self, blocks: int = 0) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(uniformity, its values on the interleaved blocks or None)`` from one kernel pass (exact up to
        ``EXACT_MAX_ROWS`` rows; above, the pooled estimate and no blocks)."""
        key = ("uniformity", blocks)
        if key not in self.values:
            if self.n > EXACT_MAX_ROWS:
                self.values[key] = (uniformity(self.z, self.t), None)
            else:
                with_blocks = blocks if self.n >= 4 * blocks else 0
                self.values[key] = uniformity_of_unit(self.u, self.t, blocks=with_blocks)
        return self.values[key]

    def uniformity_pos(self) -> torch.Tensor:
        """Uniformity of the paired view (exact up to ``EXACT_MAX_ROWS`` rows, else pooled)."""
        if self.n > EXACT_MAX_ROWS:
            return uniformity(self.zp, self.t)
        return uniformity_of_unit(self.up, self.t)[0]

    def block_means(self, v: torch.Tensor, blocks: int = 8) -> Optional[torch.Tensor]:
        """``(blocks,)`` means of a per-row value ``v`` ``(N,)`` over the interleaved row blocks, or ``None`` when
        there are fewer than ``4 * blocks`` rows."""
        if self.n < 4 * blocks:
            return None
        k, r = divmod(self.n, blocks)
        sums = v[: k * blocks].view(k, blocks).sum(dim=0)
        counts = torch.full((blocks,), k, dtype=sums.dtype, device=v.device)
        if r:
            sums[:r] += v[k * blocks:]
            counts[:r] += 1
        return sums / counts
