"""What an alert tells the user to check, by loss family.

Advice that names a mechanism of one family is wrong for the others: "the stop-gradient / predictor" means
nothing to a sentence-transformers run with MultipleNegativesRankingLoss, "the negatives and the temperature"
nothing to BYOL. So the advice depends on ``loss_family`` (config field, or set by an adapter that can tell):

* ``"contrastive"``: InfoNCE / NT-Xent / SimCLR, MoCo, CLIP, MultipleNegativesRankingLoss (negatives in the loss);
* ``"non_contrastive"``: BYOL, SimSiam, DINO, VICReg, Barlow Twins (no negatives: asymmetry or a variance term);
* ``"supervised"``: classification or metric learning with labels;
* ``None`` (default): unknown -- the advice stays neutral and names no family's mechanism.

Metrics without an entry keep the engine's own advice.

Example:
    >>> advise("uniformity rose. Check x.", "x", "uniformity", "non_contrastive")  # doctest: +ELLIPSIS
    'uniformity rose. Check the stop-gradient and the predictor ...'
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from spherewatch.catalogue import advice_group

__all__ = ["LOSS_FAMILIES", "ADVICE", "advise", "check_family"]

LOSS_FAMILIES: Tuple[str, ...] = ("contrastive", "non_contrastive", "supervised")

# which metrics take which advice: the catalogue's ``advice`` field (spherewatch.catalogue)
_SPREAD = advice_group("spread")
_RANK = advice_group("rank")

ADVICE: Dict[Optional[str], Dict[str, str]] = {
    None: {
        **{m: "the loss and what keeps it from a trivial solution, the learning rate and the augmentations or input "
              "pairs" for m in _SPREAD},
        **{m: "weight decay versus augmentation strength, the projection head's width and the learning rate"
           for m in _RANK},
    },
    "contrastive": {
        **{m: "the negatives (batch size, duplicates or false negatives in a batch) and the temperature of the loss, "
              "the learning rate and the augmentations or input pairs" for m in _SPREAD},
        **{m: "the temperature, weight decay versus augmentation strength, the projection head's width and the "
              "learning rate" for m in _RANK},
    },
    "non_contrastive": {
        **{m: "the stop-gradient and the predictor (SimSiam, BYOL), the momentum encoder, the variance / covariance "
              "terms (VICReg, Barlow Twins), the learning rate and the augmentations" for m in _SPREAD},
        **{m: "the variance / covariance terms, weight decay versus augmentation strength, the predictor and the "
              "projection head's width" for m in _RANK},
    },
    "supervised": {
        **{m: "the labels (one class dominating a batch, label noise), the learning rate and the loss's margin or "
              "temperature" for m in _SPREAD},
        **{m: "the number of classes (a supervised head spans at most C - 1 directions), weight decay and the "
              "learning rate" for m in _RANK},
    },
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
