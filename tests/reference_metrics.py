"""Slow, obvious reference implementations the metrics are tested against (float64)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def normalized64(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.double(), dim=1)


def uniform_loss(x: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola's reference: ``torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()`` on normalised rows."""
    return torch.pdist(normalized64(x), p=2).pow(2).mul(-t).exp().mean().log().item()


def align_loss(x, y, alpha=2.0) -> float:
    return (normalized64(x) - normalized64(y)).norm(p=2, dim=1).pow(alpha).mean().item()


def rankme(x: torch.Tensor, normalize=True, center=False) -> float:
    z = normalized64(x) if normalize else x.double()
    if center:
        z = z - z.mean(0)
    s = torch.linalg.svdvals(z)
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def uniformity_closed_form(d: int, t: float) -> float:
    """L*(d, t) = -2t + log 0F1(; d/2; t^2), summing the 0F1 series in log space (no Bessel underflow)."""
    b = d / 2.0
    z = t * t
    log_terms = []
    log_term = 0.0
    for k in range(400):
        log_terms.append(log_term)
        log_term += math.log(z) - math.log(k + 1) - math.log(b + k)
        if log_term < log_terms[0] - 60 and k > 10:
            break
    m = max(log_terms)
    return -2 * t + m + math.log(sum(math.exp(v - m) for v in log_terms))


def uniform_on_sphere(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def nc1_numpy(x: np.ndarray, labels: np.ndarray) -> float:
    z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    classes = sorted(set(labels.tolist()))
    n, d = z.shape
    mus = {c: z[labels == c].mean(0) for c in classes}
    mu_g = np.mean([mus[c] for c in classes], axis=0)
    sw = np.zeros((d, d))
    for i in range(n):
        v = z[i] - mus[labels[i]]
        sw += np.outer(v, v)
    sw /= n
    sb = np.zeros((d, d))
    for c in classes:
        v = mus[c] - mu_g
        sb += np.outer(v, v)
    sb /= len(classes)
    return float(np.trace(sw @ np.linalg.pinv(sb, hermitian=True)) / len(classes))
