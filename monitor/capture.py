"""Turning what a module or a training step produced into an ``(N, D)`` embedding batch."""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch

__all__ = ["extract_embeddings", "pool_tokens", "Selector"]

Selector = Union[None, str, int, Callable[[Any], torch.Tensor]]

# Keys tried, in order, when a dict / HF ModelOutput arrives and no `select` was given.
_AUTO_KEYS = ("embeddings", "embedding", "pooler_output", "sentence_embedding", "last_hidden_state", "logits")


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"Tensor{tuple(obj.shape)}"
    if isinstance(obj, dict) or hasattr(obj, "keys"):
        try:
            return f"{type(obj).__name__} with keys {list(obj.keys())}"
        except Exception:  # pragma: no cover - exotic mappings
            return type(obj).__name__
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of {len(obj)}: [" + ", ".join(_describe(o) for o in obj[:4]) + "]"
    return type(obj).__name__


def _select(output: Any, select: Selector) -> Any:
    if callable(select):
        return select(output)
    if select is None:
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, dict) or hasattr(output, "keys"):
            for key in _AUTO_KEYS:
                value = output.get(key) if hasattr(output, "get") else None
                if isinstance(value, torch.Tensor):
                    return value
            raise ValueError(
                f"Cannot find embeddings in a {_describe(output)}: pass `select=` with the key to use "
                f"(tried {list(_AUTO_KEYS)}) or a callable."
            )
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return output[0]
        raise ValueError(f"Cannot find embeddings in a {_describe(output)}: pass `select=` (a key, an index or a callable).")
    try:
        if isinstance(select, str) and not (isinstance(output, dict) or hasattr(output, "keys")):
            return getattr(output, select)
        return output[select]
    except (KeyError, IndexError, AttributeError, TypeError) as err:
        raise ValueError(f"`select={select!r}` does not match the output, a {_describe(output)}.") from err


def pool_tokens(x: torch.Tensor, how: str = "mean", mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pool ``(B, T, H)`` token embeddings to ``(B, H)``.

    ``mean`` averages the tokens, honouring an attention ``mask`` of shape ``(B, T)`` (1 = real token) when
    given; ``first`` takes token 0 (BERT's [CLS]); ``last`` takes the last real token (decoder models; the last
    position when no mask is given).
    """
    if how == "first":
        return x[:, 0]
    if how == "last":
        if mask is None:
            return x[:, -1]
        idx = (mask.to(torch.long).sum(dim=1) - 1).clamp(min=0)
        return x[torch.arange(x.shape[0], device=x.device), idx]
    if how != "mean":
        raise ValueError(f"Unknown pooling {how!r}; use one of: 'mean', 'first', 'last'.")
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def extract_embeddings(
    output: Any, select: Selector = None, pool: Optional[str] = None, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Pick the embedding tensor out of ``output`` (tensor, tuple, dict or HF ``ModelOutput``) and make it 2-D.

    ``(B, T, H)`` outputs are pooled with ``pool`` (``None`` means: refuse 3-D, with an error saying how to pool).
    A mask whose shape does not match ``(B, T)`` is ignored.
    """
    x = _select(output, select)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected the selected embeddings to be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim == 3:
        if pool is None:
            raise ValueError(
                f"Expected 2-D embeddings (N, D), got shape {tuple(x.shape)}: pass `pool='mean'` (or 'first' for a "
                "[CLS] token, 'last' for decoders) to pool token embeddings."
            )
        if mask is not None and (mask.ndim != 2 or tuple(mask.shape) != tuple(x.shape[:2])):
            mask = None
        x = pool_tokens(x, pool, mask)
    return x
