"""sentence-transformers support for :class:`~spherewatch.integrations.hf.MonitorTrainerCallback`.

``SentenceTransformerTrainer`` is a ``transformers.Trainer``: pass the usual callback and it is picked up here::

    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from spherewatch.integrations.hf import MonitorTrainerCallback

    model = SentenceTransformer(modules=[transformer, pooling])
    trainer = SentenceTransformerTrainer(model=model, train_dataset=pairs,
                                         loss=losses.MultipleNegativesRankingLoss(model),
                                         callbacks=[MonitorTrainerCallback(every_n_steps=50)])

What is captured (``module_path``, relative to the ``SentenceTransformer``):

* ``None`` (default): the model's own output, its ``sentence_embedding`` (after ``Normalize`` when the model has
  one) — what the loss sees.
* ``"1"`` (the ``Pooling`` module of a ``[Transformer, Pooling]`` model): ``sentence_embedding`` before any later
  module (``Dense``, ``Normalize``).
* ``"0"`` (the ``Transformer`` module): its ``token_embeddings`` ``(B, T, H)``, pooled over the real tokens with
  the batch's ``attention_mask`` (``pool=`` as for any tap).
* Deeper paths (``"0.model"``, ``"0.model.encoder"``): *not captured*. sentence-transformers calls the Hugging
  Face model's ``forward()`` directly, which skips forward hooks; the callback reports this once, at the first
  evaluation step, naming the paths that work.

Which output of a module is taken is decided automatically: ``sentence_embedding`` when the module's output dict
has one, else ``token_embeddings`` (pooled), else the tensor itself.

Pairs: losses over (anchor, positive[, negatives]) columns — ``MultipleNegativesRankingLoss``,
``CosineSimilarityLoss``, ``ContrastiveLoss`` and the like — run the model once for the anchors and once for the
other columns. The first call of a capture step is the anchor view, the first rows of the second call the positive
view, handed over as the pair ``observe(z, z_pos)``, so ``alignment`` (and ``uniformity_pos``) are logged. A loss
with a single column gives ``z`` alone. Under gradient accumulation the first micro-batch of the step is taken;
with ``every_micro_batch=True`` every (anchor, positive) pair of calls is, up to ``max_samples`` rows.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional

import torch

from spherewatch.integrations.torch import resolve_module

__all__ = ["SentenceTransformerCapture", "is_sentence_transformer", "sentence_embeddings"]

logger = logging.getLogger("spherewatch.integrations")


def is_sentence_transformer(model: Any) -> bool:
    """True for a ``sentence_transformers`` model (checked by class, without importing the package)."""
    return any(c.__module__.startswith("sentence_transformers") and c.__name__ in ("SentenceTransformer", "BaseModel")
               for c in type(model).__mro__)


def _pool(tokens: torch.Tensor, mask: Optional[torch.Tensor], pool: str) -> torch.Tensor:
    if pool == "first":
        return tokens[:, 0]
    if mask is None or mask.shape != tokens.shape[:2]:
        return tokens[:, -1] if pool == "last" else tokens.mean(dim=1)
    m = mask.to(tokens.dtype).unsqueeze(-1)
    if pool == "last":
        idx = (mask.long().sum(dim=1) - 1).clamp(min=0)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), idx]
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def sentence_embeddings(output: Any, pool: str = "mean") -> torch.Tensor:
    """The embeddings in a sentence-transformers module's output: ``sentence_embedding`` if present, else the
    ``token_embeddings`` pooled with the ``attention_mask`` of the same dict, else the tensor itself.

    Example:
        >>> import torch
        >>> tokens = torch.ones(2, 3, 4); mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
        >>> sentence_embeddings({"token_embeddings": tokens * torch.arange(3.0).view(1, 3, 1), "attention_mask": mask})
        tensor([[0.5000, 0.5000, 0.5000, 0.5000],
                [0.0000, 0.0000, 0.0000, 0.0000]])
    """
    if isinstance(output, Mapping):
        if isinstance(output.get("sentence_embedding"), torch.Tensor):
            return output["sentence_embedding"]
        if isinstance(output.get("token_embeddings"), torch.Tensor):
            mask = output.get("attention_mask")
            return _pool(output["token_embeddings"], mask if isinstance(mask, torch.Tensor) else None, pool)
        raise ValueError(
            f"Expected a sentence-transformers output with `sentence_embedding` or `token_embeddings`, got keys "
            f"{sorted(map(str, output))}; watch the model itself (module_path=None) or its Pooling module ('1')."
        )
    if isinstance(output, torch.Tensor):
        return output if output.ndim == 2 else _pool(output, None, pool)
    raise TypeError(f"Expected a dict or a tensor from the watched module, got {type(output).__name__}.")


class SentenceTransformerCapture:
    """Forward hook on a ``SentenceTransformer`` (or one of its top-level modules) that hands the anchor and the
    positive column of each capture step to the monitor as a pair.

    Args:
        monitor: the :class:`~spherewatch.Monitor`.
        model: the ``SentenceTransformer`` being trained.
        module_path: ``None`` (the model's output), ``"1"`` (Pooling), ``"0"`` (Transformer), ...; see the module
            docstring.
        tap: tap name in the log keys.
        pool: pooling of token embeddings.
        when: a capture step only takes outputs while ``when()`` is true (e.g. the model is in training mode).
        report: ``report(part, exc, consequence)`` for capture failures and for a module that never fired.
    """

    def __init__(self, monitor: Any, model: torch.nn.Module, module_path: Optional[str], *, tap: str,
                 pool: str = "mean", when: Callable[[], bool], report: Callable[..., None]) -> None:
        self.monitor, self.tap, self.pool, self.when, self.report = monitor, tap, pool or "mean", when, report
        self.module_path = module_path
        module = model if not module_path else resolve_module(model, module_path)
        self.calls = 0  # hook calls in the current step
        self.fired_ever = False
        self._checked = False
        self._anchor: Optional[torch.Tensor] = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if not self.when():
            return
        self.fired_ever = True
        if not self.monitor.armed:
            return
        self.calls += 1
        if self.calls > 2 and not self.monitor.config.every_micro_batch:
            return
        try:
            z = sentence_embeddings(output, self.pool)
        except Exception as exc:
            self.report(f"capture:{self.tap}", exc, "this batch was not recorded")
            return
        if self.calls % 2 == 1:  # anchors on odd calls, the other columns on even ones
            self._anchor = z.detach()
            return
        anchor, self._anchor = self._anchor, None
        if anchor is None:
            return
        n = anchor.shape[0]
        if z.ndim == 2 and z.shape[0] >= n and z.shape[0] % n == 0 and z.shape[1:] == anchor.shape[1:]:
            self.monitor.observe(anchor, z[:n].detach(), tap=self.tap)  # merged candidate columns: first is positive
        else:
            self.monitor.observe(anchor, tap=self.tap)

    def before_step(self, step: int) -> None:
        """Call before ``monitor.step(step)``: a lone anchor (single-column loss) is handed over alone; the first
        evaluation with nothing captured reports a module that never fired."""
        if self._anchor is not None:
            anchor, self._anchor = self._anchor, None
            self.monitor.observe(anchor, tap=self.tap)
        if self.monitor.armed and not self.fired_ever and not self._checked:
            self._checked = True
            self.report(f"capture:{self.tap}", RuntimeError(
                f"the module at module_path={self.module_path!r} was never called through nn.Module.__call__ by "
                f"step {step}, so its forward hook never fired and nothing was captured. sentence-transformers calls "
                "the Hugging Face model's forward() directly inside its Transformer module; watch a top-level module "
                "instead: module_path=None (the sentence embedding the loss sees), '1' (the Pooling output) or '0' "
                "(token embeddings, pooled with the attention mask)"), "nothing is captured from it")
        self.calls = 0

    def remove(self) -> None:
        self._handle.remove()
