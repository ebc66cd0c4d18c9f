"""Plain PyTorch helpers: attach a :class:`~spherewatch.Monitor` to a submodule by its dotted path.

Example::

    import spherewatch as sw
    from spherewatch.integrations.torch import watch_path

    mon = sw.Monitor(every_n_steps=50)
    watch_path(mon, model, "encoder.layer.3", tap="layer3", pool="mean")   # before the first (compiled) call
    model = torch.compile(model)                                             # optional
    for step, batch in enumerate(loader):
        loss = model(batch).loss; loss.backward(); opt.step(); opt.zero_grad()
        mon.step(step)

``torch.compile``: the hook goes on the original module (``compiled._orig_mod``), so ``watch_path`` accepts the
compiled model as well as the plain one. Install it **before the first compiled call**: the compiled graph is
built with the hooks that exist at that moment (recent torch recompiles when hooks change, older versions ignore
hooks added later). Gradient accumulation and activation checkpointing re-run the forward pass several times per
optimizer step; the Monitor takes one batch per tap per step, so nothing is counted twice.
"""
from __future__ import annotations

import difflib
from typing import Any, List, Optional

import torch  # noqa: F401  (the doctests use it)
from torch import nn

from spherewatch.capture import Selector
from spherewatch.monitor import Monitor

__all__ = ["resolve_module", "unwrap_model", "watch_path"]

_MAX_WRAPPERS = 8  # compiled-inside-DDP-inside-compiled is already exotic


def _is_compiled(module: Any) -> bool:
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` (``_orig_mod``) and ``DistributedDataParallel``/``DataParallel``
    (``.module``) wrappers.

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> unwrap_model(torch.nn.DataParallel(m)) is m
        True
    """
    for _ in range(_MAX_WRAPPERS):
        if _is_compiled(model):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
    return model


def _module_names(root: nn.Module) -> List[str]:
    """Dotted names of ``root``'s submodules as a user writes them (without ``_orig_mod`` segments)."""
    names = []
    for name, _ in root.named_modules():
        clean = ".".join(part for part in name.split(".") if part != "_orig_mod")
        if clean and clean not in names:
            names.append(clean)
    return names


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule of ``model`` at the dotted ``path`` (as in ``model.named_modules()``), unwrapped.

    ``torch.compile`` and DDP wrappers are looked through at every level, so ``"encoder.layer.3"`` finds the layer
    of a compiled or DDP-wrapped model, and of a model whose ``encoder`` alone was compiled. An empty path is the
    model itself.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``path`` is not a string.
        ValueError: no module at ``path``; the message lists the closest existing paths.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> resolve_module(model, "0")
        Linear(in_features=4, out_features=8, bias=True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected an nn.Module to look `path` up in, got {type(model).__name__}.")
    if not isinstance(path, str):
        raise TypeError(f"Expected `path` to be a dotted module path such as 'encoder.layer.3', got {path!r}.")
    root = unwrap_model(model)
    module = root
    walked: List[str] = []
    for part in [p for p in path.strip().split(".") if p]:
        module = unwrap_model(module)
        child = module._modules.get(part)
        if child is None:
            raise ValueError(_missing_path_message(root, path, walked, part))
        module = child
        walked.append(part)
    return unwrap_model(module)


def _missing_path_message(root: nn.Module, path: str, walked: List[str], part: str) -> str:
    names = _module_names(root)
    where = f"{'.'.join(walked)!r}" if walked else type(root).__name__
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    if close:
        hint = "Did you mean " + ", ".join(repr(c) for c in close) + "?"
    else:
        top = [n for n in names if "." not in n][:10]
        hint = "Top-level modules: " + (", ".join(repr(t) for t in top) if top else "none") + "."
    return (
        f"Module path {path!r} does not exist in {type(root).__name__}: {where} has no submodule {part!r}. {hint} "
        "Use a name from `model.named_modules()` ('' for the model itself)."
    )


def watch_path(
    monitor: Monitor,
    model: nn.Module,
    path: str,
    tap: Optional[str] = None,
    *,
    select: Selector = None,
    pool: Optional[str] = None,
    train_only: bool = False,
):
    """Capture the output of the submodule at ``path`` with :meth:`Monitor.watch <spherewatch.Monitor.watch>`.

    Args:
        monitor: the Monitor to feed.
        model: the model (plain, ``torch.compile``d or DDP-wrapped). With ``torch.compile``, call this before the
            first compiled call: the hook goes on the original module, and compiled graphs are built with the
            hooks that exist when they are traced.
        path: dotted module path, e.g. ``"encoder.layer.3"`` or ``"bert.pooler"`` (``""``: the model itself).
        tap: name in the log keys (default: the monitor's ``default_tap``, ``"embeddings"``).
        select: which part of a tuple / dict / ``ModelOutput`` output holds the embeddings (see ``Monitor.watch``).
        pool: pooling of ``(B, T, H)`` outputs: ``"mean"``, ``"first"`` or ``"last"`` (default: the config's).
        train_only: capture only while the watched module is in training mode, so an evaluation pass run
            between two optimizer steps (``model.eval()``) is never taken for a training batch.

    Returns:
        a handle with ``.remove()``.

    Raises:
        ValueError: no module at ``path`` (the message lists close matches).

    Example:
        >>> import spherewatch as sw
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> mon = sw.Monitor(every_n_steps=5, sinks=("memory",), warn=False)
        >>> handle = watch_path(mon, model, "0", tap="hidden")
        >>> _ = model(torch.randn(16, 4)); _ = mon.step(0)
        >>> "spherewatch/hidden/uniformity" in mon.last_values
        True
        >>> handle.remove(); mon.close()
    """
    if not isinstance(monitor, Monitor):
        raise TypeError(f"Expected a spherewatch.Monitor as `monitor`, got {type(monitor).__name__}.")
    module = resolve_module(model, path)
    return monitor.watch(module, tap, select=select, pool=pool, when=(lambda: module.training) if train_only else None)
