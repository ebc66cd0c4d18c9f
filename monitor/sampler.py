"""Taking rows: validation of handed-over batches, one capture per tap per step, forward-hook bodies, and the
bounded on-device buffers the next evaluation reads."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from spherewatch.buffer import RowReservoir
from spherewatch.capture import Selector, extract_embeddings
from spherewatch.errors import SpherewatchError

__all__ = ["Sampler", "make_forward_hook", "validate_batch"]

Rows = Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]


def _dynamo_disable(fn: Callable) -> Callable:
    """Run ``fn`` eagerly even inside a torch.compile'd model: the capture path is never traced. Imported lazily
    (``torch._dynamo`` costs seconds at import), only when a module is watched."""
    try:
        from torch._dynamo import disable
    except Exception:  # pragma: no cover - very old torch
        return fn
    return disable(fn)


def make_forward_hook(fire: Callable[[], bool], take: Callable[[Any, Mapping], None]) -> Callable:
    """A ``register_forward_hook(..., with_kwargs=True)`` hook calling ``take(output, kwargs)`` when ``fire()`` is
    true. ``fire`` runs on every forward pass (a flag check); ``take`` runs eagerly (never traced)."""
    take = _dynamo_disable(take)

    def hook(mod: torch.nn.Module, args: Any, kwargs: Mapping, output: Any) -> None:
        if fire():
            take(output, kwargs)

    return hook


def validate_batch(tap: str, z: Any, name: str, pool: Optional[str]) -> torch.Tensor:
    """``z`` as a floating ``(N, D)`` tensor (``(B, T, H)`` is pooled with ``pool``), or a clear error."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"Expected `{name}` for tap {tap!r} to be a torch.Tensor (N, D), got {type(z).__name__}.")
    if z.ndim == 3:
        z = extract_embeddings(z, pool=pool)
    if z.ndim != 2:
        raise ValueError(
            f"Expected `{name}` for tap {tap!r} to be a 2-D tensor (N, D), got shape {tuple(z.shape)}"
            + (": pass `pool='mean'` to pool tokens." if z.ndim == 3 else ".")
        )
    if z.is_complex() or not z.is_floating_point():
        raise TypeError(
            f"Expected `{name}` for tap {tap!r} to have a floating dtype, got {z.dtype}. Convert with `.float()`."
        )
    return z


def validate_rows(tap: str, z: Any, z_pos: Any, labels: Any, pool: Optional[str]) -> Rows:
    """Validate a batch, its paired view and its labels together."""
    z = validate_batch(tap, z, "z", pool)
    if z_pos is not None:
        z_pos = validate_batch(tap, z_pos, "z_pos", pool)
        if z_pos.shape != z.shape:
            raise ValueError(
                f"Expected `z_pos` to match `z` for tap {tap!r}, got {tuple(z_pos.shape)} and {tuple(z.shape)}."
            )
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != z.shape[0]:
            raise ValueError(f"Expected `labels` of shape ({z.shape[0]},) for tap {tap!r}, got "
                             f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}.")
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"Expected integer `labels`, got {labels.dtype}.")
    return z, z_pos, labels


class Sampler:
    """Takes at most one batch per tap per step while :attr:`armed`, into a reservoir buffer per tap.

    Args:
        config: the Monitor's config (``max_samples``, ``seed``, ``default_tap``, ``pool``).
        faults: where capture failures are reported (once per tap).
    """

    def __init__(self, config: Any, faults: Any) -> None:
        self.config = config
        self._faults = faults
        self.armed = False
        self.closed = False
        self._epoch = 0
        self._captured: Dict[str, int] = {}
        self._buffers: Dict[str, RowReservoir] = {}
        self.captures: Dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------------ taking rows
    def _first_this_step(self, tap: str) -> bool:
        """Whether ``tap`` may take this batch: the first of the step, or any with ``every_micro_batch``."""
        if self._captured.get(tap) == self._epoch and not self.config.every_micro_batch:
            return False
        self._captured[tap] = self._epoch
        return True

    def observe(self, z: Any = None, z_pos: Any = None, *, tap: Optional[str] = None, labels: Any = None,
                pool: Optional[str] = None, views: Any = None) -> None:
        if (views is None) == (z is None) or (views is not None and z_pos is not None):
            raise SpherewatchError("Pass either `z` (and optionally `z_pos`) or `views=` (B, V, D), not both.")
        if not self.armed or self.closed:
            return
        tap = tap or self.config.default_tap
        if not self._first_this_step(tap):
            return
        try:
            if views is not None:
                if not isinstance(views, torch.Tensor) or views.ndim != 3 or views.shape[1] < 2:
                    got = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
                    raise ValueError(f"Expected `views` for tap {tap!r} of shape (B, V, D) with V >= 2, got {got}.")
                z, z_pos = views[:, 0], views[:, 1]
            self.add(tap, z, z_pos, labels, pool)
        except Exception as exc:
            self._faults.report(f"capture:{tap}", exc, "this batch was not recorded")

    def add(self, tap: str, z: Any, z_pos: Any, labels: Any, pool: Optional[str]) -> None:
        """Validate and buffer one batch for ``tap`` (raises on bad input)."""
        z, z_pos, labels = validate_rows(tap, z, z_pos, labels, pool)
        buf = self._buffers.get(tap)
        if buf is None:
            buf = self._buffers[tap] = RowReservoir(self.config.max_samples, seed=self.config.seed + len(self._buffers))
        if buf._z is not None and buf._z.device != z.device:  # e.g. embeddings moved: follow the first device
            z = z.to(buf._z.device)
            z_pos = None if z_pos is None else z_pos.to(buf._z.device)
            labels = None if labels is None else labels.to(buf._z.device)
        buf.add(z, z_pos, labels)
        self.captures[tap] += 1

    def hook(self, tap: str, select: Selector, pool: Optional[str],
             when: Optional[Callable[[], bool]] = None) -> Callable:
        """The forward hook of ``Monitor.watch(module, tap)``; with ``when``, only calls where ``when()`` is true
        are taken (e.g. training-mode passes)."""

        def take(output: Any, kwargs: Mapping[str, Any]) -> None:
            if self.closed or (when is not None and not when()) or not self._first_this_step(tap):
                return
            try:
                mask = kwargs.get("attention_mask") if kwargs else None
                z = extract_embeddings(output, select=select, pool=pool,
                                       mask=mask if isinstance(mask, torch.Tensor) else None)
                self.add(tap, z, None, None, pool)
            except Exception as exc:
                self._faults.report(f"capture:{tap}", exc, "this batch was not recorded")

        return make_forward_hook(lambda: self.armed, take)

    # ------------------------------------------------------------------ handing rows over
    def next_step(self) -> None:
        """A new optimizer step: every tap may capture once more."""
        self._epoch += 1

    def take_all(self) -> Dict[str, Rows]:
        """The buffered rows of every tap (buffers are emptied)."""
        out: Dict[str, Rows] = {}
        for tap, buf in self._buffers.items():
            try:
                out[tap] = buf.rows()
            except Exception as exc:  # pragma: no cover - defensive
                self._faults.report(f"buffer:{tap}", exc)
                out[tap] = (None, None, None)
        self.clear()
        return out

    def clear(self) -> None:
        """Drop the rows of the current window (not the buffers' identity)."""
        for buf in self._buffers.values():
            buf.clear()

    def taps(self) -> List[str]:
        return sorted(self._buffers)
