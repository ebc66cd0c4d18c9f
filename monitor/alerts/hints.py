"""What an alert says a metric's unhealthy move means, and what to check: one ``(meaning, check)`` pair per metric.

The evaluators write the meaning into an alert's message and the engine swaps the check for the advice of the run's
loss family (:mod:`spherewatch.alerts.advice`). A metric without an entry gets a generic pair.

Example:
    >>> hint("effective_rank")[0]
    'embeddings span fewer and fewer directions — dimensional collapse'
    >>> hint("my_metric")[0]
    'the metric moved in the unhealthy direction'
"""
from __future__ import annotations

__all__ = ["hint"]

# What a degradation of a metric means, and what to check. Unknown metrics get the generic entry.
_HINTS: dict[str, tuple[str, str]] = {
    "uniformity": (
        "embeddings are losing spread on the sphere — possible collapse",
        (
            "the learning rate, the loss (for contrastive losses the negatives and the temperature; for "
            "SimSiam/BYOL-style losses the stop-gradient and the predictor) and the augmentations"
        ),
    ),
    "effective_rank": (
        "embeddings span fewer and fewer directions — dimensional collapse",
        "weight decay versus augmentation strength, the projector width and the learning rate",
    ),
    "normalized_std": (
        "embeddings are converging to one direction — possible complete collapse",
        "the learning rate, the loss (the stop-gradient and predictor of SimSiam/BYOL-style losses; the negatives "
        "of contrastive ones) and the augmentations",
    ),
    "mean_cosine": (
        "embeddings are becoming parallel — possible collapse",
        "the learning rate, the loss (the negatives of contrastive losses; the stop-gradient and predictor of "
        "SimSiam/BYOL-style ones) and the augmentations",
    ),
    "alignment": (
        "positive pairs are drifting apart",
        "the augmentations and that the two views are paired row by row",
    ),
    "collapsed_dimensions": (
        "more embedding dimensions carry (almost) no variance — dimensional collapse",
        "weight decay versus augmentation strength and the projector width",
    ),
    "dead_dimensions": (
        "more embedding dimensions are constant",
        "activations before the embedding (dead ReLUs), the learning rate and weight decay",
    ),
    "nonfinite_fraction": (
        "embeddings contain NaN/Inf values",
        "the loss for NaN, the learning rate, mixed-precision overflow (loss scaling) and the inputs",
    ),
}
_HINTS["uniformity_pos"] = _HINTS["uniformity"]
_HINTS["effective_rank_centered"] = _HINTS["effective_rank"]
_GENERIC_HINT = ("the metric moved in the unhealthy direction", "the training curves around this step")


def hint(metric: str) -> tuple[str, str]:
    """``(what the move means, what to check)`` for ``metric``; the generic pair for a metric without an entry."""
    return _HINTS.get(metric, _GENERIC_HINT)
