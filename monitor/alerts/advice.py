"""What an alert tells the user to check, by loss family.

Advice that names a mechanism of one family is wrong for the others: "the stop-gradient / predictor" means
nothing to a sentence-transformers run with MultipleNegativesRankingLoss, "the negatives and the temperature"
nothing to BYOL, "the teacher's centring" nothing to Barlow Twins. So the advice depends on ``loss_family`` (config
field; the Lightning and Hugging Face adapters infer it from the loss modules they find, :func:`infer_loss_family`):

* ``"contrastive"``: InfoNCE / NT-Xent / SimCLR, MoCo (queue + momentum encoder), CLIP,
  MultipleNegativesRankingLoss (negatives in the loss);
* ``"non_contrastive"``: BYOL, SimSiam (no negatives: an asymmetry -- predictor, stop-gradient, momentum target);
* ``"redundancy_reduction"``: Barlow Twins, VICReg, W-MSE (a variance / decorrelation term keeps the spread);
* ``"self_distillation"``: DINO, iBOT, DINOv2 (a momentum teacher with centring and sharpening);
* ``"clustering"``: SwAV, DeepCluster, SeLa (assignments to prototypes under an equipartition constraint);
* ``"supervised"``: classification or metric learning with labels;
* ``None`` (default): unknown -- the advice stays neutral and names no family's mechanism.

Each alert message carries its advice once: the evaluator writes one ``Check <what>.`` sentence and :func:`advise`
replaces it with the family's. Metrics without an entry keep the engine's own advice.

Example:
    >>> print(advise("uniformity rose. Check x.", "x", "uniformity", "non_contrastive"))  # doctest: +ELLIPSIS
    uniformity rose. Check the stop-gradient and the predictor ...
"""
from __future__ import annotations

from typing import Any, Dict, Literal, Optional, Tuple, get_args

from spherewatch.catalogue import advice_group

__all__ = ["LossFamily", "LOSS_FAMILIES", "LOSS_CLASS_FAMILIES", "ADVICE", "advise", "check_family", "infer_loss_family"]

#: The loss families (``MonitorConfig.loss_family``), the type the config validates against.
LossFamily = Literal["redundancy_reduction", "self_distillation", "clustering", "contrastive", "non_contrastive",
                     "supervised"]
LOSS_FAMILIES: Tuple[str, ...] = get_args(LossFamily)

# which metrics take which advice: the catalogue's ``advice`` field (spherewatch.catalogue)
_SPREAD = advice_group("spread")
_RANK = advice_group("rank")


def _family(spread: str, rank: str) -> Dict[str, str]:
    return {**{m: spread for m in _SPREAD}, **{m: rank for m in _RANK}}


ADVICE: Dict[Optional[str], Dict[str, str]] = {
    None: _family(
        "the loss and what keeps it from a trivial solution, the learning rate and the augmentations or input pairs",
        "weight decay versus augmentation strength, the projection head's width and the learning rate",
    ),
    "contrastive": _family(
        "the negatives (batch size or MoCo's queue and momentum encoder, duplicates or false negatives in a batch) "
        "and the temperature of the loss, the learning rate and the augmentations or input pairs",
        "the temperature, weight decay versus augmentation strength, the projection head's width and the learning "
        "rate",
    ),
    "non_contrastive": _family(
        "the stop-gradient and the predictor (SimSiam, BYOL: present, not frozen, its learning rate), the target's "
        "momentum (an EMA near 0.99, not 0), the learning rate and the augmentations",
        "the predictor and its weight decay, weight decay versus augmentation strength, the projection head's width "
        "and the learning rate",
    ),
    "redundancy_reduction": _family(
        "the variance term (VICReg's standard-deviation hinge and its weight; Barlow Twins' on-diagonal term and "
        "the batch normalisation before the cross-correlation), the learning rate and the augmentations",
        "the decorrelation term and its weight (Barlow Twins' lambda, VICReg's covariance weight), the projector's "
        "width (these losses need a wide one) and weight decay",
    ),
    "self_distillation": _family(
        "the teacher's centring (its momentum) and sharpening (the teacher temperature and its warm-up: too low "
        "collapses onto one output, no centring onto one prototype), the teacher's EMA momentum and the learning "
        "rate and its warm-up",
        "the balance of centring and sharpening, the head's output dimension and last-layer normalisation, and "
        "weight decay",
    ),
    "clustering": _family(
        "the equipartition of the assignments (Sinkhorn iterations and epsilon), the prototypes (frozen for the "
        "first iterations, normalised), the queue for small batches, the temperature and the learning rate",
        "the number of prototypes, the Sinkhorn epsilon (too large spreads every assignment evenly), the queue and "
        "weight decay",
    ),
    "supervised": _family(
        "the labels (one class dominating a batch, label noise), the learning rate and the loss's margin or "
        "temperature",
        "the number of classes (a supervised head spans at most C - 1 directions), weight decay and the learning rate",
    ),
}


def check_family(family: Optional[str]) -> Optional[str]:
    """``family`` if it is a known loss family (or ``None``), else a ``ValueError`` naming the choices."""
    if family is None or family in LOSS_FAMILIES:
        return family
    raise ValueError(f"`loss_family` must be one of {list(LOSS_FAMILIES)} or None, got {family!r}.")


def advise(message: str, engine_check: str, metric: str, family: Optional[str]) -> str:
    """``message`` with its ``Check <engine_check>.`` sentence replaced by the family's advice for ``metric``."""
    text = ADVICE.get(family, {}).get(metric) or ADVICE[None].get(metric)
    if text is None:
        return message
    old = f"Check {engine_check}."
    return message.replace(old, f"Check {text}.") if old in message else message


#: Loss classes (matched by class name, in the module tree an adapter is given) and the family each one trains:
#: lightly's and sentence-transformers' names, which hand-written ones usually share. Generic losses (cross-entropy,
#: cosine embedding, MSE) name no family.
LOSS_CLASS_FAMILIES: Dict[str, str] = {
    **dict.fromkeys(("NTXentLoss", "DCLLoss", "DCLWLoss", "InfoNCE", "InfoNCELoss", "MultipleNegativesRankingLoss",
                     "CachedMultipleNegativesRankingLoss", "MultipleNegativesSymmetricRankingLoss", "GISTEmbedLoss",
                     "CachedGISTEmbedLoss"), "contrastive"),
    **dict.fromkeys(("NegativeCosineSimilarity", "SimSiamLoss", "BYOLLoss"), "non_contrastive"),
    **dict.fromkeys(("BarlowTwinsLoss", "VICRegLoss", "VICRegLLoss"), "redundancy_reduction"),
    **dict.fromkeys(("DINOLoss", "iBOTPatchLoss", "MSNLoss", "PMSNLoss"), "self_distillation"),
    **dict.fromkeys(("SwaVLoss",), "clustering"),
}


def infer_loss_family(module: Any) -> Optional[Tuple[str, str]]:
    """``(family, class name)`` when the losses found among ``module.modules()`` (by class name, see
    :data:`LOSS_CLASS_FAMILIES`) all belong to one loss family; ``None`` when there are none, when they disagree
    (say a DINO head beside an InfoNCE term) or when ``module`` has no ``modules()``.

    Example:
        >>> import torch
        >>> class BarlowTwinsLoss(torch.nn.Module): ...
        >>> infer_loss_family(torch.nn.ModuleDict({"net": torch.nn.Linear(2, 2), "loss": BarlowTwinsLoss()}))
        ('redundancy_reduction', 'BarlowTwinsLoss')
        >>> print(infer_loss_family(torch.nn.Linear(2, 2)))
        None
    """
    modules = getattr(module, "modules", None)
    if not callable(modules):
        return None
    found: Dict[str, str] = {}
    try:
        for m in modules():
            name = type(m).__name__
            if name in LOSS_CLASS_FAMILIES:
                found.setdefault(LOSS_CLASS_FAMILIES[name], name)
    except Exception:  # an exotic module tree: no inference, never an error in the host's set-up
        return None
    if len(found) != 1:
        return None
    family, name = next(iter(found.items()))
    return family, name
