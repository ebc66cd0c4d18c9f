"""Which metrics to compute for one tap on one evaluation step; pure tensor work, no host sync.

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

Which metrics exist, what each needs and how it is computed is the catalogue's (:mod:`spherewatch.catalogue`); this
module runs it. **One evaluation shares its work**: the rows of a tap are validated, made one point and normalised
once (:class:`~spherewatch.metrics._tap.TapRows`), the column statistics once, the standard errors come from the
same pieces (block values of the one uniformity kernel pass, blocks of the normalised rows), and inside
:func:`~spherewatch.metrics._shared.shared_work` the decompositions share one fp64 pass over the rows (centred Gram
and mean; the uncentred Gram is ``C + n m m^T``) and each Gram is decomposed once.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import spherewatch.metrics as M
from spherewatch.catalogue import SPECS, MetricSpec, metric_specs
from spherewatch.metrics._shared import shared_work
from spherewatch.metrics._tap import NORM_FLOOR, SPREAD_FLOOR, TapRows, one_point

__all__ = ["compute_tap_metrics", "NORM_FLOOR", "SPREAD_FLOOR", "DERIVED_KEYS", "STDERR_METRICS"]

#: Keys logged besides the metric names themselves (metric -> extra keys), for rule validation and the docs.
DERIVED_KEYS: Dict[str, Tuple[str, ...]] = {s.name: s.derived for s in metric_specs() if s.derived}
#: Metrics logged with a ``<metric>_stderr`` beside them, and the number of disjoint row blocks used for each.
#: The spectral ones use fewer blocks (each block costs one small decomposition; 4 blocks of N/4 rows cost about
#: what the full decomposition costs).
STDERR_METRICS: Dict[str, int] = {s.name: s.stderr_blocks for s in SPECS if s.stderr_blocks}
_one_point = one_point  # the former private name (tests/reliability)


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
    is always there; ``<metric>_stderr`` sits beside the metrics listed in :data:`STDERR_METRICS`.

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
    scalars: Dict[str, torch.Tensor] = {"rows": torch.full((), float(z.shape[0]), device=z.device)}
    hists: Dict[str, torch.Tensor] = {}
    tap = TapRows(z, z_pos, labels, t=t, alpha=alpha, num_classes=num_classes)
    want = set(names)
    with shared_work():
        for spec in metric_specs():
            if (spec.name in want and _available(spec, tap, spectral)
                    and (spec.source is None or _evaluate(SPECS_BY_NAME[spec.source], tap, sink) is not None)):
                _store(spec, _evaluate(spec, tap, sink), tap, scalars, hists, spec.name in want)
        for spec in metric_specs():
            if spec.stderr is not None and spec.name in scalars:
                try:
                    se = spec.stderr(tap)
                except Exception as exc:  # noqa: BLE001 - a failed estimate drops that estimate only
                    sink[f"{spec.name}_stderr"] = exc
                    continue
                if se is not None:
                    scalars[f"{spec.name}_stderr"] = se.to(scalars[spec.name].dtype)
    if failures is None and sink:
        raise next(iter(sink.values()))
    return scalars, hists


SPECS_BY_NAME: Dict[str, MetricSpec] = {s.name: s for s in SPECS}


def _available(spec: MetricSpec, tap: TapRows, spectral: bool) -> bool:
    """Whether the tap has what ``spec`` needs (rows, a paired view, labels; spectral metrics on this step). The
    per-row statistics (``min_rows=1``) always run: on no rows at all they report the error."""
    return ((tap.n >= spec.min_rows or spec.min_rows <= 1) and (spectral or not spec.spectral)
            and ("pair" not in spec.needs or tap.raw_pos is not None)
            and ("labels" not in spec.needs or tap.labels is not None))


def _evaluate(spec: MetricSpec, tap: TapRows, sink: Dict[str, BaseException]) -> object:
    """``spec``'s value on ``tap`` (once per evaluation; kept in ``tap.values``), or None when it failed (the
    exception goes to ``sink`` under its name: one metric never takes the others down)."""
    if spec.name not in tap.values:
        try:
            tap.values[spec.name] = spec.evaluate(tap)
        except Exception as exc:  # noqa: BLE001
            sink[spec.name] = exc
            tap.values[spec.name] = None
    return tap.values[spec.name]


def _store(spec: MetricSpec, value: object, tap: TapRows, scalars: Dict[str, torch.Tensor],
           hists: Dict[str, torch.Tensor], wanted: bool) -> None:
    if value is None or not wanted:
        return
    out = value if isinstance(value, dict) else {spec.name: value}
    if spec.nan_if_nonfinite:  # the decompositions saw non-finite rows zeroed: NaN for all (masks, no sync)
        out = {k: torch.where(tap.any_bad, torch.full_like(v, float("nan")), v) for k, v in out.items()}
    (hists if spec.histogram else scalars).update(out)
