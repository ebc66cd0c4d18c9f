"""Bounded, on-device row buffer with reservoir sampling across the steps of one window."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["RowReservoir"]


class RowReservoir:
    """Keeps at most ``max_rows`` rows, a uniform sample (Algorithm R) of all rows added since the last
    :meth:`clear`.

    Rows are detached and stored as fp32 on the device they arrive on, in tensors allocated once per window.
    The accept/replace decisions depend only on row counts, never on values, so adding rows never synchronises
    with the host. Rows count only once copied: a batch whose copy fails leaves :meth:`rows` as it was (or, when
    the failure may have half overwritten rows kept earlier in the window, empties the window), so a failed
    capture never reaches the metrics. Memory bound per tap: ``max_rows * D * 4`` bytes per view (one; two with a paired
    view; ``V`` with ``observe(views=...)``, whose other views are kept as ``(max_rows, V - 1, D)``), plus
    ``max_rows * 8`` bytes with labels.
    """

    def __init__(self, max_rows: int, seed: int = 0) -> None:
        self.max_rows = int(max_rows)
        self._rng = np.random.default_rng(seed)
        self.clear()

    def clear(self) -> None:
        """Start a new window. The preallocated tensors are kept (no allocation per window); a window whose rows
        differ (width, device, paired view, labels) reallocates them."""
        if not hasattr(self, "_z"):
            self._z: Optional[torch.Tensor] = None
            self._pos: Optional[torch.Tensor] = None
            self._labels: Optional[torch.Tensor] = None
        self.filled = 0
        self.seen = 0

    def __len__(self) -> int:
        return self.filled

    def add(self, z: torch.Tensor, z_pos: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None) -> None:
        z = z.detach()
        n, d = z.shape
        if n == 0:
            return
        mismatch = self._z is not None and (
            self._z.shape[1] != d
            or self._z.device != z.device
            or (self._pos is None) != (z_pos is None)
            or (z_pos is not None and self._pos.shape[1:] != z_pos.shape[1:])
            or (self._labels is None) != (labels is None)
        )
        if mismatch and self.seen == 0:  # a new window with other rows: new tensors
            self._z = self._pos = self._labels = None
        elif mismatch:
            raise ValueError(
                f"Rows of shape {tuple(z.shape)} on {z.device} (paired={z_pos is not None}, "
                f"labels={labels is not None}) do not match the rows already buffered for this window "
                f"(D={self._z.shape[1]} on {self._z.device}). Use a separate tap for differently shaped embeddings."
            )
        if self._z is None:
            self._z = torch.empty(self.max_rows, d, device=z.device, dtype=torch.float32)
            if z_pos is not None:
                self._pos = torch.empty(self.max_rows, *z_pos.shape[1:], device=z.device, dtype=torch.float32)
            if labels is not None:
                self._labels = torch.empty(self.max_rows, device=z.device, dtype=torch.long)
        # Algorithm R, decided on the host from counts only: row number k (0-based, over the window) fills slot k
        # while k < max_rows, then replaces slot j ~ U{0..k} when j < max_rows (later rows win a shared slot).
        ks = np.arange(self.seen, self.seen + n)
        js = np.where(ks < self.max_rows, ks, np.floor(self._rng.random(n) * (ks + 1)).astype(np.int64))
        keep = js < self.max_rows
        src = np.nonzero(keep)[0].tolist()
        dst = js[keep].tolist()
        if src:
            try:
                self._write(z, z_pos, labels, src, dst)
            except BaseException:
                # rows count only once copied: slots past `filled` were never counted; a slot that held a row of
                # this window may now be half overwritten (a pair whose views disagree), so the window goes
                if min(dst) < self.filled:
                    self.filled = self.seen = 0
                raise
        self.seen += n
        self.filled = min(self.seen, self.max_rows)

    def _write(self, z: torch.Tensor, z_pos: Optional[torch.Tensor], labels: Optional[torch.Tensor],
               src: list, dst: list) -> None:
        """Copy rows ``src`` of the batch into slots ``dst``."""
        n = z.shape[0]
        if len(src) == n and dst == list(range(dst[0], dst[0] + n)):
            sl = slice(dst[0], dst[0] + n)
            self._z[sl].copy_(z, non_blocking=True)
            if self._pos is not None:
                self._pos[sl].copy_(z_pos.detach(), non_blocking=True)
            if self._labels is not None:
                self._labels[sl].copy_(labels.detach(), non_blocking=True)
            return
        # duplicates in dst are possible (a slot replaced twice in one batch): keep the last writer
        dst_a, src_a = np.asarray(dst), np.asarray(src)
        slots, first_from_end = np.unique(dst_a[::-1], return_index=True)
        last_src = src_a[::-1][first_from_end]
        dst_t = torch.from_numpy(slots.astype(np.int64)).to(z.device, non_blocking=True)
        src_t = torch.from_numpy(last_src.astype(np.int64)).to(z.device, non_blocking=True)
        # every source is taken before the first slot is written
        rows = z.index_select(0, src_t).to(torch.float32)
        pos = None if self._pos is None else z_pos.detach().index_select(0, src_t).to(torch.float32)
        lab = None if self._labels is None else labels.detach().index_select(0, src_t).to(torch.long)
        self._z.index_copy_(0, dst_t, rows)
        if pos is not None:
            self._pos.index_copy_(0, dst_t, pos)
        if lab is not None:
            self._labels.index_copy_(0, dst_t, lab)

    @property
    def device(self) -> Optional[torch.device]:
        """The device the window's rows are kept on (``None`` before the first rows)."""
        return None if self._z is None else self._z.device

    def rows(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        if self._z is None or self.filled == 0:
            return None, None, None
        k = self.filled
        return (
            self._z[:k],
            None if self._pos is None else self._pos[:k],
            None if self._labels is None else self._labels[:k],
        )
