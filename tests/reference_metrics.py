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


def prepared64(x: torch.Tensor, normalize: bool = True, center: bool = False) -> torch.Tensor:
    z = normalized64(x) if normalize else x.double()
    return z - z.mean(0) if center else z


def erank_of_singular_values(s: torch.Tensor) -> float:
    s = s.double().clamp(min=0)
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def covariance_spectrum64(x: torch.Tensor) -> torch.Tensor:
    """Descending eigenvalues of the covariance of the fp64-normalised rows, from an fp64 SVD (not a Gram)."""
    z = prepared64(x, normalize=True, center=True)
    s = torch.linalg.svdvals(z)
    lam = s * s / (z.shape[0] - 1)
    return torch.cat([lam, lam.new_zeros(z.shape[1] - lam.shape[0])])


def alpha_req64(lam: torch.Tensor, window=(11, 100), rtol: float = 1e-5) -> float:
    """Weighted (1/i) least squares of log lambda_i on log i over the window inside the numerical rank, numpy fp64."""
    lam = lam.double().numpy()
    d = lam.shape[0]
    lo, hi = window
    if d < hi:
        hi, lo = d, max(1, min(lo, d // 10))
    i = np.arange(1, d + 1, dtype=np.float64)
    keep = (i >= lo) & (i <= hi) & (lam > rtol * lam[0]) & (lam > 0)
    w, lx, ly = 1.0 / i[keep], np.log(i[keep]), np.log(lam[keep])
    slope = np.polyfit(lx, ly, 1, w=np.sqrt(w))[0]  # polyfit weights multiply residuals: sqrt of the LS weight
    return float(-slope)


def power_law_rows(n: int, d: int, a: float, seed: int = 0) -> torch.Tensor:
    """fp64 rows with singular values exactly i^-a (i = 1..min(n, d)) along random orthonormal directions."""
    g = torch.Generator().manual_seed(seed)
    k = min(n, d)
    u = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    s = torch.arange(1, k + 1, dtype=torch.float64) ** -a
    return (u * s) @ v.T


def nc1_fp64(x: torch.Tensor, labels: torch.Tensor) -> float:
    """NC1 = Tr(Sigma_W Sigma_B^+) / C in fp64, Sigma_B inverted on its top C-1 eigenpairs (as Papyan/Han's svds)."""
    z = normalized64(x)
    classes = sorted(set(labels.tolist()))
    c = len(classes)
    mus = torch.stack([z[labels == k].mean(0) for k in classes])
    mu_g = mus.mean(0)
    within = z - mus[torch.tensor([classes.index(int(v)) for v in labels])]
    sigma_w = within.T @ within / z.shape[0]
    diff = mus - mu_g
    sigma_b = diff.T @ diff / c
    lam, vec = torch.linalg.eigh(sigma_b)
    lam, vec = lam[-(c - 1):], vec[:, -(c - 1):]
    pinv = (vec / lam) @ vec.T
    return float(torch.trace(sigma_w @ pinv) / c)


def lidar_fp64(views: torch.Tensor, delta: float = 1e-4, eps: float = 0.0, normalize: bool = True) -> float:
    """LiDAR written out as in the paper / stable-pretraining's callback, in fp64, D x D throughout."""
    z = views.double()
    if normalize:
        z = F.normalize(z, dim=2)
    b, v, d = z.shape
    mu = z.mean(1)
    a = mu - mu.mean(0)
    sb = a.T @ a / (b - 1)
    w = (z - mu[:, None]).reshape(-1, d)
    sw = w.T @ w / (b * (v - 1)) + delta * torch.eye(d, dtype=torch.float64)
    lw, vw = torch.linalg.eigh(sw)
    inv_sqrt = (vw / lw.sqrt()) @ vw.T
    m = inv_sqrt @ sb @ inv_sqrt
    lam = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp(min=0) + eps
    p = lam / lam.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def barlow_redundancy(x: torch.Tensor, y: torch.Tensor) -> float:
    """Barlow Twins' own recipe in fp64 (the paper's pseudo-code: ``BatchNorm1d(affine=False)`` on each view,
    ``c = bn(z1).T @ bn(z2) / N``, ``off_diagonal(c).pow(2).sum()``), as a mean over the off-diagonal entries of the
    columns that vary in both views."""
    x, y = x.double(), y.double()
    keep = (x.std(0, unbiased=False) > 0) & (y.std(0, unbiased=False) > 0)
    x, y = x[:, keep], y[:, keep]
    bn = torch.nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-300).double().train()  # eps ~ 0: exact correlations
    c = bn(x).T @ bn(y) / x.shape[0]
    d = c.shape[0]
    off = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()  # the paper's off_diagonal()
    return off.pow(2).sum().item() / (d * (d - 1))
