"""Taking rows: validation of handed-over batches, one capture per tap per step, forward-hook bodies, and the
bounded on-device buffers the next evaluation reads."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from spherewatch.buffer import RowReservoir
from spherewatch.capture import Selector, extract_embeddings
from spherewatch.errors import SpherewatchError
from spherewatch.keys import KEY_SEGMENT, RESERVED_TAPS

__all__ = ["Sampler", "check_tap", "deferred_output_hook", "validate_batch", "validate_rows"]

Rows = Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]


_is_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)
"""True while ``torch.compile`` (dynamo) traces the calling code; a flag read in eager mode."""


def deferred_output_hook(
    pending: Dict[Any, Any], key: Any, fire: Callable[[], bool], take: Callable[[Any, Mapping[str, Any]], None],
    *, training_only: bool = False,
) -> Callable[..., None]:
    """A forward hook ``(module, args, kwargs, output)`` that is safe inside ``torch.compile(fullgraph=True)``.

    Eagerly it calls ``take(output, kwargs)`` when ``fire()`` is true. While dynamo traces it, it only stores
    ``(take, output, attention_mask)`` under ``pending[key]`` -- a dict store that dynamo replays after the graph
    has run, so there is no graph break, no guard on ``fire()``'s flag and no recompile when the monitor arms or
    disarms. The owner calls ``take`` on what is pending, eagerly, at its next ``step()``; the first forward pass
    since the last step is kept, as in eager mode. ``training_only`` skips passes of a module in eval mode
    (``take`` runs at ``step()``, when the module is usually back in training mode, so it cannot tell).
    """

    def hook(mod: Any, args: Any, kwargs: Any, output: Any) -> None:
        if _is_compiling():
            if training_only and not mod.training:  # a guarded constant for dynamo: no recompile per step
                return
            mask = kwargs.get("attention_mask") if kwargs else None
            # setdefault: the first forward pass of the step wins, as in eager mode (gradient accumulation)
            pending.setdefault(key, (take, output.detach() if isinstance(output, torch.Tensor) else output,
                                     {} if mask is None else {"attention_mask": mask}))
            return
        if fire():
            take(output, kwargs)

    return hook


def check_tap(tap: Any) -> str:
    """A tap name is part of every key ``<prefix>/<tap>/<metric>``: letters, digits, ``_ . -`` only, and none of
    :data:`spherewatch.keys.RESERVED_TAPS`."""
    if not isinstance(tap, str) or not KEY_SEGMENT.match(tap):
        raise ValueError(f"Expected a tap name made of letters, digits, '_', '.' and '-' (it is part of the log keys "
                         f"<prefix>/<tap>/<metric>), got {tap!r}.")
    if tap in RESERVED_TAPS:
        raise ValueError(f"The tap name {tap!r} is reserved ({', '.join(RESERVED_TAPS)} name keys that are not "
                         f"metrics): pass another `tap=`, e.g. {tap + '_embeddings'!r}.")
    return tap


def dense_rows(tap: str, z: torch.Tensor, name: str) -> torch.Tensor:
    """``z`` as a plain strided tensor whose rows are whole embeddings, or a clear error.

    * A sparse tensor (COO, CSR, ...) is densified.
    * A ``DTensor`` (tensor parallelism) gives its **local** part, without a collective (a capture must never wait
      on other ranks): with ``Replicate()`` placements that is the whole tensor, with ``Shard(0)`` this rank's
      rows (the evaluation then gathers rows across ranks like any other). A ``DTensor`` sharded along the
      embedding dimension or holding partial sums has no whole row on any rank: it is refused, naming the fix.
    """
    if callable(getattr(z, "to_local", None)) and hasattr(z, "placements"):  # torch.distributed.tensor.DTensor
        bad = [p for p in z.placements if not (p.is_replicate() or (p.is_shard() and p.dim == 0))]
        if bad:
            raise ValueError(
                f"`{name}` for tap {tap!r} is a DTensor with placements {tuple(z.placements)}: no rank holds whole "
                "rows. Redistribute it first (`z.redistribute(placements=[Replicate()])` or `z.full_tensor()`), or "
                "watch a module whose output is replicated or sharded along the batch (Shard(0)).")
        z = z.to_local()
    if z.layout != torch.strided:
        z = z.to_dense()
    return z


def validate_batch(tap: str, z: Any, name: str, pool: Optional[str]) -> torch.Tensor:
    """``z`` as a floating, dense ``(N, D)`` tensor (``(B, T, H)`` is pooled with ``pool``; see :func:`dense_rows`
    for sparse tensors and ``DTensor``), or a clear error."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"Expected `{name}` for tap {tap!r} to be a torch.Tensor (N, D), got {type(z).__name__}.")
    z = dense_rows(tap, z, name)
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


def validate_rows(tap: str, z: Any, z_pos: Any, labels: Any, pool: Optional[str], *, views: bool = False) -> Rows:
    """Validate a batch, its paired view and its labels together. With ``views``, ``z_pos`` may hold the other
    views of each row, ``(N, V - 1, D)`` (``observe(views=...)`` with ``V > 2``)."""
    z = validate_batch(tap, z, "z", pool)
    if isinstance(z_pos, torch.Tensor) and z_pos.ndim == 3 and views:  # the other views of observe(views=)
        if z_pos.shape[0] != z.shape[0] or z_pos.shape[2] != z.shape[1] or not z_pos.is_floating_point():
            raise ValueError(f"Expected the other views for tap {tap!r} of shape ({z.shape[0]}, V-1, {z.shape[1]}) "
                             f"and a floating dtype, got {tuple(z_pos.shape)} {z_pos.dtype}.")
    elif z_pos is not None:
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
        labels = dense_rows(tap, labels, "labels")
    if isinstance(z_pos, torch.Tensor) and z_pos.ndim == 3:
        z_pos = dense_rows(tap, z_pos, "z_pos")
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
        # outputs of watched modules seen while torch.compile traced them, taken eagerly at the next step
        self._pending: Dict[Any, Any] = {}
        self._hooks_made = 0

    # ------------------------------------------------------------------ taking rows
    def first_this_step(self, tap: str) -> bool:
        """Whether ``tap`` may take this batch: the first of the step, or any with ``every_micro_batch`` (the head
        taps ask too, under names no embedding tap can have)."""
        if self._captured.get(tap) == self._epoch and not self.config.every_micro_batch:
            return False
        self._captured[tap] = self._epoch
        return True

    def observe(self, z: Any = None, z_pos: Any = None, *, tap: Optional[str] = None, labels: Any = None,
                pool: Optional[str] = None, views: Any = None) -> None:
        if views is not None and (z is not None or z_pos is not None):  # a programming error: raised at once
            raise SpherewatchError("Pass either `z` (and optionally `z_pos`) or `views=` (B, V, D), not both.")
        if views is None and z is None:
            # no embeddings this step (e.g. a branch that produced none): reported once (raised under strict), never
            # raised into the training loop at every step
            tap = tap or self.config.default_tap
            self._faults.report(f"capture:{tap}", SpherewatchError(
                "observe() got no embeddings (z=None): pass `z` (N, D) (and optionally `z_pos`), or `views=` "
                "(B, V, D)."), "this call was ignored")
            return
        if _is_compiling():  # inside torch.compile: a dict store dynamo can trace; taken eagerly at the next step
            self.defer(f"observe:{tap}", self._take_observed, (z, z_pos, tap, labels, pool, views), {})
            return
        if not self.armed or self.closed:
            return
        tap = tap or self.config.default_tap
        if not self.first_this_step(tap):
            return
        try:
            check_tap(tap)
            if views is not None:
                if not isinstance(views, torch.Tensor) or views.ndim != 3 or views.shape[1] < 2:
                    got = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
                    raise ValueError(f"Expected `views` for tap {tap!r} of shape (B, V, D) with V >= 2, got {got}.")
                # view 0 is the row; the others are its positives: (B, D) for two views, (B, V - 1, D) for more
                z, z_pos = views[:, 0], (views[:, 1] if views.shape[1] == 2 else views[:, 1:])
            self.add(tap, z, z_pos, labels, pool, views=views is not None)
        except Exception as exc:
            self._faults.report(f"capture:{tap}", exc, "this batch was not recorded")

    def _take_observed(self, args: Any, kwargs: Mapping[str, Any]) -> None:
        z, z_pos, tap, labels, pool, views = args
        self.observe(z, z_pos, tap=tap, labels=labels, pool=pool, views=views)

    def add(self, tap: str, z: Any, z_pos: Any, labels: Any, pool: Optional[str], *, views: bool = False) -> None:
        """Validate and buffer one batch for ``tap`` (raises on bad input)."""
        z, z_pos, labels = validate_rows(tap, z, z_pos, labels, pool, views=views)
        buf = self._buffers.get(tap)
        if buf is None:
            self._check_buffer_bytes(tap, z, z_pos)
            buf = self._buffers[tap] = RowReservoir(self.config.max_samples, seed=self.config.seed + len(self._buffers))
        device = buf.device
        if buf.seen and device != z.device:  # e.g. embeddings moved: follow the window's first device
            z = z.to(device)
            z_pos = None if z_pos is None else z_pos.to(device)
            labels = None if labels is None else labels.to(device)
        buf.add(z, z_pos, labels)
        self.captures[tap] += 1
        self._faults.recovered(f"capture:{tap}")

    def _check_buffer_bytes(self, tap: str, z: torch.Tensor, z_pos: Optional[torch.Tensor]) -> None:
        """Refuse a tap whose buffer would exceed ``max_buffer_bytes`` -- before anything is allocated."""
        cfg = self.config
        views = 1 if z_pos is None else 1 + (int(z_pos.shape[1]) if z_pos.ndim == 3 else 1)
        need = cfg.max_samples * int(z.shape[1]) * 4 * views  # rows are kept in fp32
        if need > cfg.max_buffer_bytes:
            raise MemoryError(
                f"the buffer of tap {tap!r} would take {need / 2**20:.1f} MiB (max_samples={cfg.max_samples} x "
                f"D={int(z.shape[1])} x 4 bytes x {views} view(s)), more than max_buffer_bytes="
                f"{cfg.max_buffer_bytes}; lower `max_samples` or raise `max_buffer_bytes`"
            )

    def output_hook(self, fire: Callable[[], bool], take: Callable[[Any, Mapping[str, Any]], None], *,
                    training_only: bool = False) -> Callable:
        """A forward hook calling ``take(output, kwargs)`` when ``fire()`` is true, safe under ``torch.compile``
        (``fullgraph=True`` included): inside a compiled region the output is kept and ``take`` runs eagerly at
        the next step (:meth:`take_pending`)."""
        self._hooks_made += 1
        return deferred_output_hook(self._pending, f"hook:{self._hooks_made}", fire, take, training_only=training_only)

    def hook(self, tap: str, select: Selector, pool: Optional[str],
             when: Optional[Callable[[], bool]] = None) -> Callable:
        """The forward hook of ``Monitor.watch(module, tap)``; with ``when``, only calls where ``when()`` is true
        are taken (e.g. training-mode passes; under torch.compile: passes of the module in training mode)."""

        def take(output: Any, kwargs: Mapping[str, Any]) -> None:
            if not self.armed or self.closed or not self.first_this_step(tap):
                return
            try:
                mask = kwargs.get("attention_mask") if kwargs else None
                z = extract_embeddings(output, select=select, pool=pool,
                                       mask=mask if isinstance(mask, torch.Tensor) else None)
                self.add(tap, z, None, None, pool)
            except Exception as exc:
                self._faults.report(f"capture:{tap}", exc, "this batch was not recorded")

        fire = (lambda: self.armed) if when is None else (lambda: self.armed and when())
        return self.output_hook(fire, take, training_only=when is not None)

    def defer(self, key: str, take: Callable[[Any, Mapping[str, Any]], None], output: Any,
              kwargs: Mapping[str, Any]) -> None:
        """Keep ``take(output, kwargs)`` for the next step (:meth:`take_pending`): what a call inside a
        ``torch.compile``'d region does instead of taking its tensors (a dict store dynamo can trace); the first call
        per ``key`` and step is kept."""
        self._pending.setdefault(key, (take, output, kwargs))

    def take_pending(self) -> None:
        """Take, eagerly, the outputs that watched modules produced inside a ``torch.compile``'d region since the
        last step."""
        if not self._pending:
            return
        pending = list(self._pending.values())
        self._pending.clear()
        for take, output, kwargs in pending:
            try:
                take(output, kwargs)
            except Exception as exc:  # take() reports its own failures; this is the last line of defence
                self._faults.report("capture", exc, "this batch was not recorded")

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
