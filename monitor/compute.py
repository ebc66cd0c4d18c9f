"""Which metrics to compute for one tap on one evaluation step; pure tensor work, no host sync."""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import spherewatch.metrics as M
from spherewatch.config import SPECTRAL_METRICS
from spherewatch.metrics.stderr import block_stderr

__all__ = ["compute_tap_metrics"]


def compute_tap_metrics(
    z: torch.Tensor,
    z_pos: Optional[torch.Tensor],
    labels: Optional[torch.Tensor],
    names: Sequence[str],
    *,
    spectral: bool,
    t: float = 2.0,
    alpha: float = 2.0,
    num_classes: Optional[int] = None,
    fallbacks: Optional[List[BaseException]] = None,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Return ``(scalars, histograms)``: 0-d and 1-D tensors on ``z``'s device, keyed by metric name.

    Metrics that need what is missing (a paired view, labels, at least two rows) are left out; the
    eigen-decomposition metrics only when ``spectral`` is true. ``rows`` (the number of rows behind the values)
    is always there; ``<metric>_stderr`` sits beside the metrics listed in :data:`STDERR_METRICS` (see
    :func:`_add_stderr`).

    ``fallbacks``: when a list is given, every :class:`~spherewatch.metrics.DecompositionFallbackWarning` raised
    here (a device solver failed and the decomposition was recomputed on the CPU in fp64; the values are valid)
    is appended to it instead of being emitted, for the caller to report once through its fault path.
    """
    if fallbacks is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", M.DecompositionFallbackWarning)
            out = compute_tap_metrics(z, z_pos, labels, names, spectral=spectral, t=t, alpha=alpha,
                                      num_classes=num_classes)
        for w in caught:
            if issubclass(w.category, M.DecompositionFallbackWarning):
                fallbacks.append(w.message)
            else:  # anything else goes on as it came
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        return out
    scalars: Dict[str, torch.Tensor] = {}
    hists: Dict[str, torch.Tensor] = {}
    n = z.shape[0]
    scalars["rows"] = torch.full((), float(n), device=z.device)
    want = set(names)
    if "nonfinite_fraction" in want:
        scalars["nonfinite_fraction"] = M.nonfinite_fraction(z)
    if "norm_stats" in want:
        for k, v in M.norm_stats(z).items():
            scalars[k] = v
    if n < 2:
        return scalars, hists
    if "alignment" in want and z_pos is not None:
        scalars["alignment"] = M.alignment(z, z_pos, alpha)
    if "uniformity" in want:
        scalars["uniformity"] = M.uniformity(z, t)
    if "uniformity_pos" in want and z_pos is not None:
        scalars["uniformity_pos"] = M.uniformity(z_pos, t)
    if "normalized_std" in want:
        scalars["normalized_std"] = M.normalized_std(z)
    if "mean_cosine" in want:
        scalars["mean_cosine"] = M.mean_cosine(z)
    if "dead_dimensions" in want:
        scalars["dead_dimensions"] = M.dead_dimensions(z)
    if "nc1" in want and labels is not None:
        try:  # without num_classes, nc1 reads labels.max() (one host sync, on evaluation steps only)
            scalars["nc1"] = M.nc1(z, labels, num_classes=num_classes)
        except ValueError:  # fewer than two classes in this sample: nothing to measure
            pass
    if spectral and want & SPECTRAL_METRICS:
        # LAPACK refuses non-finite input: decompose with those rows zeroed, then report NaN for the whole
        # spectral family when any row was non-finite (no host sync: masks, not branches).
        finite_rows = torch.isfinite(z).all(dim=1, keepdim=True)
        any_bad = ~finite_rows.all()
        z = torch.where(finite_rows, z, torch.zeros_like(z))
        spectral_start = len(scalars)
        if "effective_rank" in want:
            scalars["effective_rank"] = M.effective_rank(z)
        if "effective_rank_centered" in want:
            scalars["effective_rank_centered"] = M.effective_rank(z, center=True)
        if want & {"spectrum", "collapsed_dimensions", "alpha_req"}:
            lam = M.spectrum(z)
            if "spectrum" in want:
                hists["spectrum"] = lam
            if "collapsed_dimensions" in want:
                scalars["collapsed_dimensions"] = M.collapsed_dimensions(lam)
            if "alpha_req" in want:
                fit = M.alpha_req(lam)
                scalars["alpha_req"] = fit.alpha
                scalars["alpha_req_r2"] = fit.r2
        nan = torch.full((), float("nan"), device=z.device)
        for name in list(scalars)[spectral_start:]:
            scalars[name] = torch.where(any_bad, nan.to(scalars[name].dtype), scalars[name])
        for name in hists:
            hists[name] = torch.where(any_bad, nan.to(hists[name].dtype), hists[name])
        if "lidar" in want and z_pos is not None:
            # LiDAR (issue 10): the two views of each row are one surrogate class; NaN when any row of either is
            pos_ok = torch.isfinite(z_pos).all(dim=1, keepdim=True)
            views = torch.stack([z, torch.where(pos_ok, z_pos, torch.zeros_like(z_pos))], dim=1)
            value = M.lidar(views)
            scalars["lidar"] = torch.where(any_bad | ~pos_ok.all(), nan.to(value.dtype), value)
    _add_stderr(scalars, z, z_pos, t=t, alpha=alpha)
    return scalars, hists


# ------------------------------------------------------------------------------------------- standard errors
#: Metrics logged with a ``<metric>_stderr`` beside them, and the number of disjoint row blocks used for each.
#: The spectral ones use fewer blocks (each block costs one small decomposition; 4 blocks of N/4 rows cost about
#: what the full decomposition costs).
STDERR_METRICS: Dict[str, int] = {
    "uniformity": 8, "mean_cosine": 8, "normalized_std": 8, "alignment": 8, "effective_rank": 4,
}


def _add_stderr(scalars: Dict[str, torch.Tensor], z: torch.Tensor, z_pos: Optional[torch.Tensor], *, t: float,
                alpha: float) -> None:
    """Add ``<metric>_stderr`` (batch-means standard error from disjoint row blocks, on device, no host sync) for
    the metrics of :data:`STDERR_METRICS` present in ``scalars``; nothing when there are too few rows."""
    fns = {
        "uniformity": lambda x: M.uniformity(x, t),
        "mean_cosine": M.mean_cosine,
        "normalized_std": M.normalized_std,
        "effective_rank": M.effective_rank,
    }
    for name, blocks in STDERR_METRICS.items():
        if name not in scalars:
            continue
        if name == "alignment":
            se = block_stderr(lambda x, y: M.alignment(x, y, alpha), z, z_pos, blocks=blocks) if z_pos is not None else None
        else:
            # a block of fewer rows than dimensions caps the rank at the block size: no estimate then
            min_rows = max(8, z.shape[1]) if name == "effective_rank" else 4
            se = block_stderr(fns[name], z, blocks=blocks, min_rows=min_rows)
        if se is not None:
            scalars[f"{name}_stderr"] = se.to(scalars[name].dtype)
