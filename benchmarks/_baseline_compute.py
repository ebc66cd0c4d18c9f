"""The evaluation as it was before issue 21 (``git show 222587e:monitor/compute.py``, kept verbatim below this
paragraph) -- the baseline of ``benchmarks/evaluation.py``: every metric and every stderr block prepares its rows
itself. Not part of the library.

Which metrics to compute for one tap on one evaluation step; pure tensor work, no host sync.

Two guarantees live here (the metric functions themselves stay pure, see :mod:`spherewatch.metrics`):

* **One failing metric drops only itself.** Every metric runs on its own; an exception (e.g. ``linalg.eigh``
  failing to converge on a collapsed spectrum) is recorded in ``failures`` under the metric's name and the other
  metrics of the tap are still returned. Metrics derived from a failed one (``collapsed_dimensions`` and
  ``alpha_req`` from ``spectrum``) are dropped with it, under the name of the one that failed.
* **Degenerate input reads as collapsed, never as healthy.** A row whose L2 norm is at most :data:`NORM_FLOOR`
  (``1e-6``, absolute) carries no usable direction (fp16 cannot represent most such rows; a decomposition of
  them works at rounding level). Such rows are all treated as **one and the same point** (a fixed unit vector)
  before the geometry metrics run, so an all-zero or near-zero batch reads: ``mean_cosine`` 1,
  ``uniformity`` 0, ``normalized_std`` 0, ``effective_rank`` 1, ``dead_dimensions`` 1 and
  ``collapsed_dimensions`` D -- complete collapse -- instead of "isotropic". Their share is logged as
  ``zero_norm_fraction`` (with ``norm_stats``), computed on the raw rows like ``norm_stats`` and
  ``nonfinite_fraction``. A spectrum whose total variance is at most :data:`SPREAD_FLOOR` (all rows on one point)
  counts every dimension as collapsed (a relative cut below ``λ_max = 0`` would count none).
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import spherewatch.metrics as M
from spherewatch.config import SPECTRAL_METRICS
from spherewatch.metrics.stderr import block_stderr

__all__ = ["compute_tap_metrics", "NORM_FLOOR", "SPREAD_FLOOR", "DERIVED_KEYS"]

#: Rows with an L2 norm at most this (absolute) are degenerate: all treated as one point.
NORM_FLOOR = 1e-6
#: A spectrum of L2-normalised rows whose eigenvalues sum to at most this has every dimension collapsed.
SPREAD_FLOOR = 1e-8
#: Keys logged besides the metric names themselves (metric -> extra keys), for rule validation and the docs.
DERIVED_KEYS: Dict[str, Tuple[str, ...]] = {
    "norm_stats": ("norm_mean", "norm_std", "norm_min", "norm_max", "zero_norm_fraction"),
    "alpha_req": ("alpha_req_r2",),
}


def _one_point(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x`` in fp32 with its degenerate rows (finite norm <= NORM_FLOOR) replaced by one fixed unit vector, and
    the mask of those rows ``(N, 1)``."""
    x = x.float()
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    tiny = norms <= NORM_FLOOR  # NaN/Inf rows compare False: they are the nonfinite rule's business
    point = torch.full((1, x.shape[1]), x.shape[1] ** -0.5, dtype=x.dtype, device=x.device)
    return torch.where(tiny, point, x), tiny


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
    failures: Optional[Dict[str, BaseException]] = None,
    fallbacks: Optional[List[BaseException]] = None,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Return ``(scalars, histograms)``: 0-d and 1-D tensors on ``z``'s device, keyed by metric name.

    Metrics that need what is missing (a paired view, labels, at least two rows) are left out; the
    eigen-decomposition metrics only when ``spectral`` is true. ``rows`` (the number of rows behind the values)
    is always there; ``<metric>_stderr`` sits beside the metrics listed in :data:`STDERR_METRICS` (see
    :func:`_add_stderr`).

    Args:
        failures: a dict that receives ``{metric name: exception}`` for every metric that raised; the others are
            still computed and returned. ``None``: the first failure is raised once every other metric has run
            (for direct callers that want an error).
        fallbacks: when a list is given, every :class:`~spherewatch.metrics.DecompositionFallbackWarning` raised
            here (a device solver failed and the decomposition was recomputed on the CPU in fp64; the values are
            valid) is appended to it instead of being emitted, for the caller to report once through its fault path.
    """
    if fallbacks is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", M.DecompositionFallbackWarning)
            out = compute_tap_metrics(z, z_pos, labels, names, spectral=spectral, t=t, alpha=alpha,
                                      num_classes=num_classes, failures=failures)
        for w in caught:
            if issubclass(w.category, M.DecompositionFallbackWarning):
                fallbacks.append(w.message)
            else:  # anything else goes on as it came
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        return out
    sink: Dict[str, BaseException] = {} if failures is None else failures
    scalars: Dict[str, torch.Tensor] = {}
    hists: Dict[str, torch.Tensor] = {}

    def run(name: str, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one metric must never take the others down
            sink[name] = exc
            return None

    n = z.shape[0]
    scalars["rows"] = torch.full((), float(n), device=z.device)
    want = set(names)
    if "nonfinite_fraction" in want:
        v = run("nonfinite_fraction", lambda: M.nonfinite_fraction(z))
        if v is not None:
            scalars["nonfinite_fraction"] = v
    if "norm_stats" in want:
        stats = run("norm_stats", lambda: M.norm_stats(z))
        if stats is not None:
            scalars.update(stats)
    if n < 2:
        _finish(failures, sink)
        return scalars, hists
    point = run("norm_floor", lambda: _one_point(z))
    if point is None:  # pragma: no cover - a norm cannot fail where norm_stats did not
        _finish(failures, sink)
        return scalars, hists
    zz, tiny = point
    if "norm_stats" in want:
        scalars["zero_norm_fraction"] = tiny.float().mean()
    zp = zp_views = None
    if z_pos is not None:
        # the other views of each row, (N, V - 1, D) (V > 2 from observe(views=...)); the pair metrics read view 1,
        # LiDAR every view
        pos = z_pos if z_pos.ndim == 3 else z_pos.unsqueeze(1)
        zp_views = run("alignment" if "alignment" in want else "uniformity_pos",
                       lambda: _one_point(pos.flatten(0, 1))[0].reshape(pos.shape))
        zp = None if zp_views is None else zp_views[:, 0]

    def scalar(name: str, fn: Callable[[], torch.Tensor]) -> None:
        v = run(name, fn)
        if v is not None:
            scalars[name] = v

    if "alignment" in want and zp is not None:
        scalar("alignment", lambda: M.alignment(zz, zp, alpha))
    if "uniformity" in want:
        scalar("uniformity", lambda: M.uniformity(zz, t))
    if "uniformity_pos" in want and zp is not None:
        scalar("uniformity_pos", lambda: M.uniformity(zp, t))
    if "normalized_std" in want:
        scalar("normalized_std", lambda: M.normalized_std(zz))
    if "mean_cosine" in want:
        scalar("mean_cosine", lambda: M.mean_cosine(zz))
    if "dead_dimensions" in want:
        scalar("dead_dimensions", lambda: M.dead_dimensions(zz))
    if "nc1" in want and labels is not None:
        try:  # without num_classes, nc1 reads labels.max() (one host sync, on evaluation steps only)
            scalars["nc1"] = M.nc1(zz, labels, num_classes=num_classes)
        except ValueError:  # fewer than two classes in this sample: nothing to measure
            pass
        except Exception as exc:  # noqa: BLE001
            sink["nc1"] = exc
    if spectral and want & SPECTRAL_METRICS:
        _spectral(zz, zp_views, want, scalars, hists, run)
    _add_stderr(scalars, zz, zp, t=t, alpha=alpha, run=run)
    _finish(failures, sink)
    return scalars, hists


def _spectral(z, z_views, want, scalars, hists, run) -> None:
    # LAPACK refuses non-finite input: decompose with those rows zeroed, then report NaN for the whole
    # spectral family when any row was non-finite (no host sync: masks, not branches).
    finite_rows = torch.isfinite(z).all(dim=1, keepdim=True)
    any_bad = ~finite_rows.all()
    z = torch.where(finite_rows, z, torch.zeros_like(z))
    done = []
    for name, kw in (("effective_rank", {}), ("effective_rank_centered", {"center": True})):
        if name in want:
            v = run(name, lambda kw=kw: M.effective_rank(z, **kw))
            if v is not None:
                scalars[name] = v
                done.append(name)
    if want & {"spectrum", "collapsed_dimensions", "alpha_req"}:
        lam = run("spectrum", lambda: M.spectrum(z))
        if lam is not None:
            if "spectrum" in want:
                hists["spectrum"] = lam
            if "collapsed_dimensions" in want:
                cd = run("collapsed_dimensions", lambda: M.collapsed_dimensions(lam))
                if cd is not None:  # every row on one point: every dimension collapsed (see SPREAD_FLOOR)
                    everything = torch.full_like(cd, float(lam.numel()))
                    scalars["collapsed_dimensions"] = torch.where(lam.sum() <= SPREAD_FLOOR, everything, cd)
                    done.append("collapsed_dimensions")
            if "alpha_req" in want:
                fit = run("alpha_req", lambda: M.alpha_req(lam))
                if fit is not None:
                    scalars["alpha_req"] = fit.alpha
                    scalars["alpha_req_r2"] = fit.r2
                    done += ["alpha_req", "alpha_req_r2"]
    nan = torch.full((), float("nan"), device=z.device)
    for name in done:
        scalars[name] = torch.where(any_bad, nan.to(scalars[name].dtype), scalars[name])
    for name in hists:
        hists[name] = torch.where(any_bad, nan.to(hists[name].dtype), hists[name])
    if "lidar" in want and z_views is not None:
        # LiDAR (issue 10): the views of each row (z and its other views, (N, V - 1, D)) are one surrogate class;
        # NaN when any row of any view is non-finite
        pos_ok = torch.isfinite(z_views).all(dim=2).all(dim=1).view(-1, 1, 1)
        views = torch.cat([z.unsqueeze(1), torch.where(pos_ok, z_views, torch.zeros_like(z_views))], dim=1)
        value = run("lidar", lambda: M.lidar(views))
        if value is not None:
            scalars["lidar"] = torch.where(any_bad | ~pos_ok.all(), nan.to(value.dtype), value)


def _finish(failures: Optional[Dict[str, BaseException]], sink: Dict[str, BaseException]) -> None:
    if failures is None and sink:
        raise next(iter(sink.values()))


# ------------------------------------------------------------------------------------------- standard errors
#: Metrics logged with a ``<metric>_stderr`` beside them, and the number of disjoint row blocks used for each.
#: The spectral ones use fewer blocks (each block costs one small decomposition; 4 blocks of N/4 rows cost about
#: what the full decomposition costs).
STDERR_METRICS: Dict[str, int] = {
    "uniformity": 8, "mean_cosine": 8, "normalized_std": 8, "alignment": 8, "effective_rank": 4,
}


def _add_stderr(scalars: Dict[str, torch.Tensor], z: torch.Tensor, z_pos: Optional[torch.Tensor], *, t: float,
                alpha: float, run: Optional[Callable[[str, Callable[[], object]], object]] = None) -> None:
    """Add ``<metric>_stderr`` (batch-means standard error from disjoint row blocks, on device, no host sync) for
    the metrics of :data:`STDERR_METRICS` present in ``scalars``; nothing when there are too few rows. A failure of
    one estimate (reported through ``run`` under ``<metric>_stderr``) drops that estimate only."""
    fns = {
        "uniformity": lambda x: M.uniformity(x, t),
        "mean_cosine": M.mean_cosine,
        "normalized_std": M.normalized_std,
        "effective_rank": M.effective_rank,
    }
    run = run or (lambda name, fn: fn())
    # the decomposition refuses non-finite rows: zero them and report NaN when any row was non-finite (no sync)
    finite = torch.isfinite(z).all(dim=1, keepdim=True)
    z_finite = torch.where(finite, z, torch.zeros_like(z))
    nan = torch.full((), float("nan"), device=z.device)
    for name, blocks in STDERR_METRICS.items():
        if name not in scalars:
            continue
        if name == "alignment":
            if z_pos is None:
                continue
            se = run(f"{name}_stderr", lambda b=blocks: block_stderr(lambda x, y: M.alignment(x, y, alpha), z, z_pos,
                                                                     blocks=b))
        elif name == "effective_rank":
            # a block of fewer rows than dimensions caps the rank at the block size: no estimate then
            se = run(f"{name}_stderr", lambda b=blocks: block_stderr(M.effective_rank, z_finite, blocks=b,
                                                                     min_rows=max(8, z.shape[1])))
            se = None if se is None else torch.where(finite.all(), se, nan.to(se.dtype))
        else:
            se = run(f"{name}_stderr", lambda name=name, blocks=blocks: block_stderr(fns[name], z, blocks=blocks,
                                                                                      min_rows=4))
        if se is not None:
            scalars[f"{name}_stderr"] = se.to(scalars[name].dtype)
