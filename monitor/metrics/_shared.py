"""One evaluation's shared work: what the metric functions derive from the same rows is computed once.

Inside :func:`shared_work` (the Monitor opens one per tap and evaluation, :mod:`spherewatch.compute`), a metric
function asked for a piece of work on a tensor that another one already did on **the same tensor object** reuses
it: the L2-normalised rows (:func:`~spherewatch.metrics._validation.normalize_rows`), the fp64 moments of the
normalised rows (one pass gives the centred Gram and the mean; the uncentred Gram is ``C + n m m^T``) and the
eigenvalues of a prepared Gram (``effective_rank_centered`` and ``spectrum`` decompose the same matrix). Outside a
scope nothing is kept and every function computes what it needs, as before. The pieces live as long as the scope
(one evaluation of one tap) and are keyed by the tensor object, which the scope holds, so an id is never reused.

Example:
    >>> import torch
    >>> from spherewatch.metrics._validation import normalize_rows
    >>> x = torch.randn(8, 4)
    >>> with shared_work():
    ...     normalize_rows(x) is normalize_rows(x)
    True
    >>> normalize_rows(x) is normalize_rows(x)
    False
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Dict, Hashable, Iterator, Tuple

import torch

__all__ = ["shared_work", "sharing", "reuse", "remember"]

_LOCAL = threading.local()


@contextlib.contextmanager
def shared_work() -> Iterator[None]:
    """A scope in which work on the same tensor object is done once (nested scopes share the outer one)."""
    outer = getattr(_LOCAL, "memo", None)
    if outer is None:
        _LOCAL.memo = {}
    try:
        yield
    finally:
        if outer is None:
            _LOCAL.memo = None


def sharing() -> bool:
    """Whether a :func:`shared_work` scope is open in this thread."""
    return getattr(_LOCAL, "memo", None) is not None


def reuse(x: torch.Tensor, what: Hashable, fn: Callable[[], Any]) -> Any:
    """``fn()``, computed once per ``(x, what)`` inside a scope (every time outside one)."""
    memo: Dict[Tuple[int, Hashable], Tuple[torch.Tensor, Any]] = getattr(_LOCAL, "memo", None)
    if memo is None:
        return fn()
    hit = memo.get((id(x), what))
    if hit is not None and hit[0] is x:
        if isinstance(hit[1], _Later):  # handed on by remember(), computed on first use
            memo[(id(x), what)] = (x, hit[1].fn())
            return memo[(id(x), what)][1]
        return hit[1]
    value = fn()
    memo[(id(x), what)] = (x, value)
    return value


class _Later:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


def remember(x: torch.Tensor, what: Hashable, value: Any) -> None:
    """Record ``value`` as the ``what`` of ``x`` in the open scope (nothing outside one): a caller that derived it
    more cheaply (e.g. the normalised rows of a masked copy from those of the original) hands it on. A callable
    ``value`` is called on first use only."""
    memo = getattr(_LOCAL, "memo", None)
    if memo is not None:
        memo[(id(x), what)] = (x, _Later(value) if callable(value) else value)
