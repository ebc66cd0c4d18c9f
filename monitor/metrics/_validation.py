"""Input checks and row normalisation shared by every metric."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spherewatch.metrics._shared import reuse

__all__ = ["as_embeddings", "as_pair", "normalize_rows", "check_positive"]


def as_embeddings(x: torch.Tensor, name: str = "embeddings", *, min_rows: int = 2) -> torch.Tensor:
    """Validate an ``(N, D)`` embedding batch and return it as fp32 (grad kept, no host sync)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor of shape (N, D), got {type(x).__name__}.")
    if x.ndim != 2:
        raise ValueError(
            f"Expected `{name}` to be a 2-D tensor (N, D), got shape {tuple(x.shape)}. "
            "Pool token embeddings first (e.g. `x.mean(dim=1)`) or flatten with `x.flatten(1)`."
        )
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(
            f"Expected `{name}` to have a real floating dtype (float16, bfloat16, float32, float64), "
            f"got {x.dtype}. Convert with `x.float()`."
        )
    if x.shape[0] < min_rows:
        raise ValueError(
            f"Expected `{name}` to have at least {min_rows} rows, got shape {tuple(x.shape)}. "
            "Collect a larger batch (the Monitor buffers rows across steps)."
        )
    if x.shape[1] < 1:
        raise ValueError(f"Expected `{name}` to have at least one column, got shape {tuple(x.shape)}.")
    if x.dtype == torch.float64:
        return x
    return x.to(torch.float32)


def as_pair(x: torch.Tensor, y: torch.Tensor, names: tuple = ("x", "y")) -> tuple:
    """Validate two paired batches of the same shape."""
    x = as_embeddings(x, names[0], min_rows=1)
    y = as_embeddings(y, names[1], min_rows=1)
    if x.shape != y.shape:
        raise ValueError(
            f"Expected `{names[0]}` and `{names[1]}` to have the same shape (paired rows), got "
            f"{tuple(x.shape)} and {tuple(y.shape)}. Row i of each must be two views of the same sample."
        )
    if x.device != y.device:
        raise ValueError(f"Expected `{names[0]}` and `{names[1]}` on one device, got {x.device} and {y.device}.")
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows; a zero row stays zero (``F.normalize`` guards the division). Done once per tensor inside
    an evaluation's :func:`~spherewatch.metrics._shared.shared_work` scope (the result must not be written to)."""
    return reuse(x, "unit", lambda: _normalize(x))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize`` (bit for bit), also for finite rows whose sum of squares overflows (up to fp32's largest):
    those are first divided by a power of two (exact), so they keep their direction instead of becoming zero."""
    if x.numel() == 0 or not x.is_floating_point() or (
            x.device.type == "cpu" and not bool(x.detach().abs().amax() > 2.0 ** 50)):  # a free check on the CPU
        return F.normalize(x, p=2.0, dim=1, eps=1e-12)
    from spherewatch.metrics._tap import pow2_row_scale  # _tap imports this module

    # accelerators always take this path (no host sync); dividing a row by its scale of 1 changes no bit

    return F.normalize(x / pow2_row_scale(x.float()).to(x.dtype), p=2.0, dim=1, eps=1e-12)


def check_positive(value: float, name: str) -> float:
    if isinstance(value, torch.Tensor) or not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a Python number, got {type(value).__name__}.")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"Expected `{name}` to be a finite number > 0, got {value!r}.")
    return float(value)
