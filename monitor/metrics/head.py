r"""Assignment-head metrics (DINO, iBOT, DINOv2, SwAV, MSN): how a head that assigns each sample to ``K``
prototypes uses them. Pure torch, any device, any float dtype (computed in fp32), no host synchronisation.

The head's collapse lives here, not in the embeddings' geometry: a teacher that puts every sample on the same two
prototypes can sit on a backbone whose embeddings look as spread as ever. The DINO paper (Caron et al. 2021,
section 5.3 and its figure of the teacher's entropy and the student-teacher KL) names the two modes:

* **uniform output** -- every sample assigned evenly to every prototype: the teacher's per-sample entropy
  (:func:`teacher_entropy`) rises to ``log K`` (1 normalised), and the KL between teacher and student goes to 0;
* **one dimension dominating** -- every sample assigned to the same few prototypes: the entropy of the batch-mean
  assignment (:func:`usage_entropy`) falls towards 0, the largest mean probability (:func:`max_mean_probability`)
  towards 1, and most prototypes are never anyone's argmax (:func:`dead_prototype_fraction`).

Inputs: ``(B, K)`` logits (``probs=False``, the default: the assignment is ``softmax((x - center) / temperature)``,
the teacher's centring and sharpening of DINO) or probabilities (``probs=True``: rows of non-negative weights, e.g.
SwAV's Sinkhorn codes or an iBOT / MSN target; each row is renormalised to sum 1).

All of them are functions of additive per-batch sums (:func:`head_stats`): the number of rows, the sum of the rows'
assignments, the sum of their entropies, the argmax counts and the sum of the per-row KLs. The Monitor adds those
up over the batches of an evaluation window and across ranks (never the rows themselves: ``K`` may be 65536) and
reads the metrics from them with :func:`head_values`.

Example:
    >>> import torch
    >>> from spherewatch.metrics import teacher_entropy, usage_entropy
    >>> uniform = torch.zeros(8, 16)                       # every logit equal: uniform output
    >>> round(float(teacher_entropy(uniform)), 4), round(float(usage_entropy(uniform)), 4)
    (1.0, 1.0)
    >>> one = torch.full((8, 16), -1e4); one[:, 3] = 0     # every sample on prototype 3
    >>> round(float(teacher_entropy(one)), 4), round(float(usage_entropy(one)), 4)
    (0.0, 0.0)
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Union

import torch

__all__ = [
    "head_probabilities", "teacher_entropy", "usage_entropy", "prototypes_in_use", "max_mean_probability",
    "teacher_student_kl", "dead_prototype_fraction", "head_stats", "merge_head_stats", "head_values", "HEAD_KEYS",
]

Temperature = Union[float, torch.Tensor]

#: The keys :func:`head_values` returns (``teacher_student_kl`` only when a student was given), in display order.
HEAD_KEYS = ("teacher_entropy", "usage_entropy", "prototypes_in_use", "max_mean_probability", "teacher_student_kl",
             "dead_prototype_fraction")


def _check(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected `{name}` to be a tensor, got {type(x).__name__}.")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 2:
        raise ValueError(f"Expected `{name}` of shape (B, K) with B >= 1 rows and K >= 2 prototypes, got "
                         f"{tuple(x.shape)}.")
    if not (x.is_floating_point()):
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, got {x.dtype}.")
    return x


def _log_probs(x: torch.Tensor, temperature: Temperature = 1.0, *, probs: bool = False,
               center: Optional[torch.Tensor] = None, name: str = "teacher") -> torch.Tensor:
    """``(B, K)`` fp32 log-assignments (``-inf`` where a probability is 0)."""
    x = _check(x, name)
    x = x.detach().float() if x.dtype != torch.float64 else x.detach()
    if probs:
        p = x.clamp_min(0)
        p = p / p.sum(dim=1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        return torch.log(p)
    if center is not None:
        x = x - center.detach().to(x.dtype)
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.detach().to(x.device, x.dtype)
    elif not temperature > 0:
        raise ValueError(f"Expected a temperature > 0, got {temperature}.")
    return torch.log_softmax(x / temperature, dim=1)


def head_probabilities(x: torch.Tensor, temperature: Temperature = 1.0, *, probs: bool = False,
                       center: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""The head's assignment ``(B, K)`` fp32: :math:`\mathrm{softmax}((x - c) / \tau)` of logits, or the rows of
    ``x`` renormalised to sum 1 (``probs=True``).

    Example:
        >>> import torch
        >>> head_probabilities(torch.tensor([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
    """
    return _log_probs(x, temperature, probs=probs, center=center).exp()


def _row_entropy(logp: torch.Tensor) -> torch.Tensor:
    """``(B,)`` entropy of each row (``0 log 0 = 0``)."""
    p = logp.exp()
    return (-torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=1)).abs()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return (-torch.special.xlogy(p, p).sum(dim=-1)).abs()  # >= 0 (no -0.0 or rounding below 0)


def teacher_entropy(teacher: torch.Tensor, temperature: Temperature = 1.0, *, probs: bool = False,
                    center: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Mean per-sample entropy of the teacher's assignment, normalised by ``log K``.

    .. math:: \frac{1}{B \log K}\sum_i H(p_i), \qquad H(p) = -\sum_k p_k \log p_k

    Args:
        teacher: ``(B, K)`` logits (``probs=False``) or probabilities.
        temperature: the teacher's temperature ``tau`` (logits only; DINO: 0.04 warming up to 0.07).
        center: subtracted from the logits before the temperature (DINO's centring), ``(K,)``.

    Returns:
        0-d fp32 in ``[0, 1]``. **1 = uniform output** (every sample spread evenly over all prototypes: DINO
        without sharpening, or a teacher temperature far too high). Healthy DINO teachers are sharp: well below 1
        (about 0.1-0.5 of ``log K``). 0 = every sample one-hot (healthy when the one-hots differ: read it with
        :func:`usage_entropy`).

    Example:
        >>> import torch
        >>> round(float(teacher_entropy(torch.zeros(4, 32))), 4)
        1.0

    Reference: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021, Fig. 7.
    """
    logp = _log_probs(teacher, temperature, probs=probs, center=center)
    return (_row_entropy(logp).mean() / math.log(logp.shape[1])).float()


def usage_entropy(teacher: torch.Tensor, temperature: Temperature = 1.0, *, probs: bool = False,
                  center: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Entropy of the batch-mean assignment, normalised by ``log K``: how evenly the prototypes are used.

    .. math:: \frac{H(\bar p)}{\log K}, \qquad \bar p = \frac{1}{B}\sum_i p_i

    Its exponential, :math:`\exp(H(\bar p))` (:func:`prototypes_in_use`), is the number of prototypes in use
    (the perplexity of the mean assignment).

    Returns:
        0-d fp32 in ``[0, 1]``. **Near 0 = one prototype dominating** (every sample on the same prototype(s)); 1 =
        every prototype used equally (also by uniform output: read it with :func:`teacher_entropy`). Healthy: high,
        but with sharp one-hot-like rows capped by the batch, at most ``log B / log K``. Always at least
        :func:`teacher_entropy` (entropy is concave).

    Example:
        >>> import torch
        >>> balanced = torch.eye(4).repeat(2, 1)            # 8 one-hot rows, each prototype twice
        >>> round(float(usage_entropy(balanced, probs=True)), 4)
        1.0

    Reference: Caron et al., DINO, ICCV 2021 (section 5.3); Assran et al., "Masked Siamese Networks" (MSN), ECCV 2022
    (the mean-entropy maximisation regulariser).
    """
    p = _log_probs(teacher, temperature, probs=probs, center=center).exp()
    return (_entropy(p.mean(dim=0)) / math.log(p.shape[1])).float()


def prototypes_in_use(teacher: torch.Tensor, temperature: Temperature = 1.0, *, probs: bool = False,
                      center: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Perplexity of the batch-mean assignment, :math:`\exp H(\bar p) = K^{\text{usage entropy}}`: the number of
    prototypes in use, in ``[1, K]``; 1 = one-prototype collapse.

    Example:
        >>> import torch
        >>> round(float(prototypes_in_use(torch.eye(5), probs=True)), 3)
        5.0
    """
    p = _log_probs(teacher, temperature, probs=probs, center=center).exp()
    return _entropy(p.mean(dim=0)).exp().float()


def max_mean_probability(teacher: torch.Tensor, temperature: Temperature = 1.0, *, probs: bool = False,
                         center: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""The largest entry of the batch-mean assignment, :math:`\max_k \bar p_k`.

    Returns:
        0-d fp32 in ``[1/K, 1]``. **Near 1 = one prototype takes every sample**; ``1/K`` = perfectly balanced
        (or uniform output). Healthy: a small multiple of ``1 / (prototypes in use)``.

    Example:
        >>> import torch
        >>> round(float(max_mean_probability(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), probs=True)), 4)
        0.6667

    Reference: Caron et al., DINO, ICCV 2021 (section 5.3, "one dimension dominates").
    """
    p = _log_probs(teacher, temperature, probs=probs, center=center).exp()
    return p.mean(dim=0).max().float()


def teacher_student_kl(teacher: torch.Tensor, student: torch.Tensor, teacher_temp: Temperature = 1.0,
                       student_temp: Temperature = 1.0, *, probs: bool = False,
                       center: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Mean over rows of :math:`\mathrm{KL}(p^{t}_i \,\Vert\, p^{s}_i)` (nats), teacher and student of the same
    samples (the same view, or the views the loss pairs).

    .. math:: \frac{1}{B}\sum_i \sum_k p^t_{ik} (\log p^t_{ik} - \log p^s_{ik})

    DINO's loss is the cross-entropy :math:`H(p^t, p^s) = H(p^t) + \mathrm{KL}`; this is its part that the student
    can still reduce.

    Args:
        teacher, student: ``(B, K)`` logits (``probs=False``; temperatures ``teacher_temp`` and ``student_temp``,
            ``center`` applies to the teacher only) or probabilities.

    Returns:
        0-d fp32, ``>= 0``. **Near 0 = collapse** (both modes: the student matches a teacher that carries no
        information); healthy DINO keeps it well above 0 (order 0.1-1 nats) throughout training.

    Example:
        >>> import torch
        >>> float(teacher_student_kl(torch.zeros(3, 4), torch.zeros(3, 4)))
        0.0

    Reference: Caron et al., DINO, ICCV 2021, Fig. 7 (right).
    """
    logt = _log_probs(teacher, teacher_temp, probs=probs, center=center)
    logs = _log_probs(student, student_temp, probs=probs, name="student")
    if logs.shape != logt.shape:
        raise ValueError(f"Expected `student` of the teacher's shape {tuple(logt.shape)}, got {tuple(logs.shape)}.")
    return _row_kl(logt, logs).mean().float()


def _row_kl(logt: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
    pt = logt.exp()
    return torch.where(pt > 0, pt * (logt - logs), torch.zeros_like(pt)).sum(dim=1).clamp_min(0)


def dead_prototype_fraction(teacher: torch.Tensor, temperature: Temperature = 1.0, *, probs: bool = False,
                            center: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Fraction of the ``K`` prototypes that are no row's argmax.

    Returns:
        0-d fp32 in ``[0, 1 - 1/K]``. Near ``1 - 1/K`` = one-prototype collapse. It depends on the rows: ``B``
        rows leave at least ``1 - B/K`` dead, so compare it across steps of one run (the Monitor counts over every
        row of an evaluation window), not with 0.

    Example:
        >>> import torch
        >>> float(dead_prototype_fraction(torch.eye(4)[[0, 0, 1]], probs=True))
        0.5
    """
    logp = _log_probs(teacher, temperature, probs=probs, center=center)
    counts = torch.bincount(logp.argmax(dim=1), minlength=logp.shape[1])
    return (counts == 0).float().mean()


# ----------------------------------------------------------------------------- sufficient statistics
def head_stats(teacher: torch.Tensor, student: Optional[torch.Tensor] = None, *, teacher_temp: Temperature = 1.0,
               student_temp: Temperature = 1.0, probs: bool = False,
               center: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Additive statistics of one batch, fp32 on the input's device (no host sync): ``rows`` (0-d), ``prob_sum``
    ``(K,)`` (sum of the assignments), ``entropy_sum`` (0-d, nats), ``argmax_count`` ``(K,)`` and, with a student,
    ``kl_sum`` (0-d, nats). Two batches' statistics add up (:func:`merge_head_stats`); :func:`head_values` reads
    the metrics from them. Rows with a NaN/Inf entry are dropped (counted in ``nonfinite_rows``).

    Example:
        >>> import torch
        >>> s = head_stats(torch.zeros(4, 8))
        >>> float(s["rows"]), s["prob_sum"].tolist()[:2], round(float(s["entropy_sum"]) / 4, 4)  # log 8 each
        (4.0, [0.5, 0.5], 2.0794)
    """
    logt = _log_probs(teacher, teacher_temp, probs=probs, center=center)
    logt = logt.float()
    ok = torch.isfinite(torch.where(logt == float("-inf"), torch.zeros_like(logt), logt)).all(dim=1)
    p = torch.where(ok.unsqueeze(1), logt.exp(), torch.zeros_like(logt))
    ent = torch.where(ok, _row_entropy(logt), torch.zeros_like(ok, dtype=logt.dtype))
    arg = torch.where(ok, logt.argmax(dim=1), torch.full_like(ok, logt.shape[1], dtype=torch.long))
    out = {
        "rows": ok.sum().float(),
        "nonfinite_rows": (~ok).sum().float(),
        "prob_sum": p.sum(dim=0),
        "entropy_sum": ent.sum(),
        "argmax_count": torch.bincount(arg, minlength=logt.shape[1] + 1)[: logt.shape[1]].float(),
    }
    if student is not None:
        logs = _log_probs(student, student_temp, probs=probs, name="student").float()
        if logs.shape != logt.shape:
            raise ValueError(f"Expected `student` of the teacher's shape {tuple(logt.shape)}, got "
                             f"{tuple(logs.shape)}.")
        okk = ok & torch.isfinite(torch.where(logs == float("-inf"), torch.zeros_like(logs), logs)).all(dim=1)
        kl = torch.where(okk, _row_kl(torch.where(okk.unsqueeze(1), logt, torch.zeros_like(logt)),
                                      torch.where(okk.unsqueeze(1), logs, torch.zeros_like(logs))),
                         torch.zeros_like(ent))
        out["kl_sum"] = kl.sum()
        out["kl_rows"] = okk.sum().float()
    return out


def merge_head_stats(a: Optional[Mapping[str, torch.Tensor]], b: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``a + b`` key by key (``a=None``: a copy of ``b``); ``kl_sum`` only when both have it (or ``a`` is None).

    Raises:
        ValueError: when the two come from heads with different ``K``.
    """
    if a is None:
        return dict(b)
    if a["prob_sum"].shape != b["prob_sum"].shape:
        raise ValueError(f"Expected the same number of prototypes K in every batch of a head tap, got "
                         f"{a['prob_sum'].shape[0]} and then {b['prob_sum'].shape[0]}.")
    out = {k: a[k] + b[k].to(a[k].device) for k in a if k in b}
    return out


def head_values(stats: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The metrics (0-d fp32 tensors, keys :data:`HEAD_KEYS`) from summed :func:`head_stats`; empty without rows.

    Example:
        >>> import torch
        >>> v = head_values(head_stats(torch.eye(4).repeat(3, 1), probs=True))
        >>> {k: round(float(x), 4) for k, x in v.items()}  # doctest: +NORMALIZE_WHITESPACE
        {'teacher_entropy': 0.0, 'usage_entropy': 1.0, 'prototypes_in_use': 4.0, 'max_mean_probability': 0.25,
         'dead_prototype_fraction': 0.0}
    """
    n = stats["rows"]
    k = stats["prob_sum"].shape[0]
    logk = math.log(k)
    mean = stats["prob_sum"] / n.clamp_min(1)
    mean = mean / mean.sum().clamp_min(torch.finfo(mean.dtype).tiny)
    usage = _entropy(mean)
    out = {
        "teacher_entropy": stats["entropy_sum"] / n.clamp_min(1) / logk,
        "usage_entropy": usage / logk,
        "prototypes_in_use": usage.exp(),
        "max_mean_probability": mean.max(),
    }
    if "kl_sum" in stats:
        out["teacher_student_kl"] = stats["kl_sum"] / stats["kl_rows"].clamp_min(1)
    out["dead_prototype_fraction"] = (stats["argmax_count"] == 0).float().mean()
    none = torch.full_like(n, float("nan"))
    return {key: torch.where(n > 0, v.float(), none).float() for key, v in out.items()}
