"""Capture helpers shared by the adapters: a gated forward hook and a bounded collector of epoch-level rows."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, List, Optional, Tuple

import torch

from spherewatch.capture import Selector, extract_embeddings

__all__ = ["RowCollector", "add_output_hook", "extract"]


def add_output_hook(
    module: torch.nn.Module, fire: Callable[[], bool], take: Callable[[Any, Mapping], None], monitor: Any,
    *, training_only: bool = False,
) -> torch.utils.hooks.RemovableHandle:
    """Register a forward hook that calls ``take(output, kwargs)`` when ``fire()`` is true.

    ``fire`` must be cheap (it runs on every forward pass; a flag check). Inside a ``torch.compile``'d region
    (``fullgraph=True`` included) neither is traced: the output is kept and ``take`` runs eagerly at ``monitor``'s
    next ``step()`` (see :meth:`Monitor.output_hook`).
    """
    hook = monitor.output_hook(fire, take, training_only=training_only)
    return module.register_forward_hook(hook, with_kwargs=True)


def extract(output: Any, kwargs: Optional[Mapping], select: Selector, pool: Optional[str]) -> torch.Tensor:
    """``(N, D)`` embeddings from a module's output, pooling tokens with the call's ``attention_mask`` if any."""
    mask = kwargs.get("attention_mask") if kwargs else None
    return extract_embeddings(output, select=select, pool=pool, mask=mask if isinstance(mask, torch.Tensor) else None)


class RowCollector:
    """Keeps the first ``max_rows`` rows handed over (detached copies), with their labels when every batch has
    them; for epoch-level embeddings (e.g. a whole validation epoch)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = int(max_rows)
        self._reset()

    def _reset(self) -> None:
        self._z: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []
        self._rows = 0
        self._all_labelled = True

    @property
    def full(self) -> bool:
        return self._rows >= self.max_rows

    def add(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        room = self.max_rows - self._rows
        if room <= 0:
            return
        z = z[:room].detach().clone()
        self._z.append(z)
        self._rows += z.shape[0]
        if labels is None or labels.ndim != 1 or labels.shape[0] < z.shape[0]:
            self._all_labelled = False
        elif self._all_labelled:
            self._labels.append(labels[: z.shape[0]].detach().clone())

    def take(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """All rows so far (concatenated) and their labels (``None`` unless every batch had them), then reset."""
        z = torch.cat(self._z) if self._z else None
        labels = torch.cat(self._labels) if (self._all_labelled and self._labels) else None
        self._reset()
        return z, labels
