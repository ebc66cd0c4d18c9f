"""The metric catalogue: one :class:`MetricSpec` per metric and per key logged beside one, the only place that says
what a metric needs, how an evaluation computes it, how it is shown and how to read it.

Everything else reads it: the config's ``METRICS``, ``SPECTRAL_METRICS``, ``PRESETS`` and ``known_metric_keys``
(:mod:`spherewatch.config`), the evaluation (:mod:`spherewatch.compute`: which metrics run, on what, with which
standard errors, ``DERIVED_KEYS``, ``STDERR_METRICS``), the key catalogue and display order
(:mod:`spherewatch.keys`: ``CATALOGUE``, ``describe``, ``order_keys``, the TensorBoard layout), the alert hints
(:func:`hint`) and the loss-family advice groups (:mod:`spherewatch.alerts.advice`).

Adding a metric: its function in :mod:`spherewatch.metrics` (with its tests) and one :class:`MetricSpec` in
:data:`SPECS` below; ``evaluate`` receives the tap's prepared rows (:class:`~spherewatch.metrics._tap.TapRows`:
``tap.z`` the fp32 rows with degenerate rows made one point, ``tap.u`` normalised, ``tap.zp`` the paired view...).

Example:
    >>> from spherewatch.catalogue import spec, preset
    >>> spec("effective_rank").spectral, spec("effective_rank").collapsed_value, spec("effective_rank").worse
    (True, 1.0, 'fall')
    >>> preset("cheap")
    ('alignment', 'normalized_std', 'mean_cosine', 'dead_dimensions', 'nonfinite_fraction', 'norm_stats')
    >>> spec("alpha_req").derived
    ('alpha_req_r2',)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

import torch

import spherewatch.metrics as M
from spherewatch.metrics._tap import SPREAD_FLOOR, TapRows
from spherewatch.metrics.indicators import norm_stats_of_norms
from spherewatch.metrics.stderr import block_stderr, stderr_of_blocks

__all__ = [
    "OVERVIEW", "SPECTRUM", "HEALTH", "HEAD", "CATEGORIES", "head_specs", "PRESET_NAMES", "MetricSpec", "SPECS", "spec",
    "metric_specs", "key_specs", "preset", "hint", "GENERIC_HINT", "advice_group", "collapsed_at_top",
]

OVERVIEW, SPECTRUM, HEALTH = "Collapse overview", "Spectrum", "Health checks"
#: The category of the assignment-head metrics (issue 18; shown only when a head tap is logged).
HEAD = "Assignment head"
#: What the head metrics of prototype usage mean when they move toward one prototype, and what to check (one text
#: for the three of them).
_FEWER_PROTOTYPES = "the head assigns every sample to fewer and fewer prototypes (one-prototype collapse)"
_ONE_PROTOTYPE_CHECK = (
    "the centring of the teacher's output (DINO: removed, or a centre momentum too low), Sinkhorn / equipartition of "
    "the codes (SwAV: its iterations and epsilon), freezing the prototypes for the first epoch(s), the teacher "
    "temperature (too low sharpens onto few prototypes) and the EMA momentum"
)
#: Dashboard categories, in display order ("Health checks" stays last: closed by default).
CATEGORIES: Tuple[str, ...] = (OVERVIEW, SPECTRUM, HEAD, HEALTH)
#: The cost presets (``MonitorConfig.preset``). ``cheap``: O(N D), no decomposition. ``standard``: + uniformity and
#: RankMe. ``full``: every metric.
PRESET_NAMES: Tuple[str, ...] = ("cheap", "standard", "full")
CHEAP, STANDARD = frozenset({"cheap", "standard", "full"}), frozenset({"standard", "full"})
CHEAP_ONLY, FULL = frozenset({"cheap", "full"}), frozenset({"full"})
#: What an alert on a metric without a hint says, and what it tells the user to check.
GENERIC_HINT: Tuple[str, str] = ("the metric moved in the unhealthy direction", "the training curves around this step")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric (``derived_of is None``) or one key logged beside a metric (``norm_mean`` beside ``norm_stats``).

    Attributes:
        name: the metric part of the key (``uniformity``); a config ``metrics`` entry unless derived.
        title, category, priority, description, collapsed, healthy: how the key is shown and read (dashboards,
            TensorBoard tag descriptions, report panels); ``title=None``: not shown on its own (``norm_stats`` logs
            only its derived keys). Lower ``priority`` comes first within the catalogue.
        function: the public function of :mod:`spherewatch.metrics` it logs (documentation; None for derived keys).
        evaluate: ``evaluate(tap) -> value`` on the tap's prepared rows: a 0-d tensor, a 1-D histogram
            (``histogram=True``), a dict of keys (the metric's derived keys) or ``None`` (nothing to log).
        needs: what the tap must have besides two rows: ``"pair"`` (a paired view), ``"labels"``.
        min_rows: rows it needs (1: per-row statistics of the raw rows).
        spectral: needs an eigen-decomposition (follows ``spectral_every_n_steps``).
        nan_if_nonfinite: reported as NaN when any row is non-finite (the decompositions see those rows zeroed).
        source: a metric whose value it is computed from (``collapsed_dimensions`` from ``spectrum``): that one
            runs first, and a failure there drops this one under the source's name.
        derived_of: for a derived key, the metric that logs it.
        stderr_blocks, stderr: ``<name>_stderr`` (batch-means standard error over ``stderr_blocks`` interleaved row
            blocks, ``stderr(tap) -> 0-d tensor or None``), or 0 / None.
        collapsed_value, worse: its value at complete collapse (None when it depends on D or has none) and the
            direction of a degradation (``"rise"``/``"fall"``, None when neither means collapse).
        hint: ``(what a degradation means, what to check)`` for the alerts' messages (None: :data:`GENERIC_HINT`).
        advice: the loss-family advice group of :mod:`spherewatch.alerts.advice` (``"spread"``/``"rank"``) or None.
        presets: the cost presets it belongs to (a derived key: those of its metric).
        head: a metric of a head tap (:mod:`spherewatch.heads`, read from ``(B, K)`` assignments, never from
            embeddings): not a ``metrics`` config entry, computed whenever a head tap has rows.
    """

    name: str
    title: Optional[str]
    category: str
    priority: int
    description: str = ""
    collapsed: str = ""
    healthy: str = ""
    function: Optional[Callable[..., Any]] = None
    evaluate: Optional[Callable[[TapRows], Any]] = None
    needs: FrozenSet[str] = frozenset()
    min_rows: int = 2
    spectral: bool = False
    histogram: bool = False
    nan_if_nonfinite: bool = False
    source: Optional[str] = None
    derived_of: Optional[str] = None
    stderr_blocks: int = 0
    stderr: Optional[Callable[[TapRows], Optional[torch.Tensor]]] = None
    collapsed_value: Optional[float] = None
    worse: Optional[str] = None
    hint: Optional[Tuple[str, str]] = None
    advice: Optional[str] = None
    presets: FrozenSet[str] = FULL
    head: bool = False

    @property
    def derived(self) -> Tuple[str, ...]:
        """The keys logged beside this metric (``norm_stats`` -> ``norm_mean`` ...), in order."""
        return _DERIVED.get(self.name, ())


# ------------------------------------------------------------------------------------- evaluators on the tap
def _se(values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if values is None else stderr_of_blocks(values)


def _alignment_rows(tap: TapRows) -> torch.Tensor:
    return tap.pair_sq if tap.alpha == 2.0 else tap.pair_sq.pow(tap.alpha / 2.0)


def _mean_cosine(tap: TapRows) -> torch.Tensor:
    s = tap.columns.block_sums.sum(dim=0)
    return (s.dot(s) - tap.row_sq.sum()) / (tap.n * (tap.n - 1))


def _mean_cosine_se(tap: TapRows) -> Optional[torch.Tensor]:
    cols = tap.columns
    q = tap.block_means(tap.row_sq, 8)
    if q is None or cols.blocks != 8:
        return None
    s, m = cols.block_sums, cols.counts
    return stderr_of_blocks(((s * s).sum(dim=1) - q * m) / (m * (m - 1)))


def _normalized_std_se(tap: TapRows) -> Optional[torch.Tensor]:
    cols = tap.columns
    return stderr_of_blocks(cols.block_std.mean(dim=1)) if cols.blocks == 8 else None


def _uniformity_se(tap: TapRows) -> Optional[torch.Tensor]:
    return _se(tap.uniformity(8)[1])


def _rank_se(tap: TapRows) -> Optional[torch.Tensor]:
    # a block of fewer rows than dimensions caps the rank at the block size: no estimate then
    se = block_stderr(M.effective_rank, tap.z_spec, blocks=4, min_rows=max(8, tap.d))
    return None if se is None else torch.where(tap.any_bad, torch.full_like(se, float("nan")), se)


def _norm_stats(tap: TapRows) -> Dict[str, torch.Tensor]:
    if tap.raw.dtype == torch.float64 or tap.n == 0:  # fp64 rows in fp64 (the shared norms are fp32); no rows: an error
        out = dict(M.norm_stats(tap.raw))
    else:
        out = dict(norm_stats_of_norms(tap.norms.flatten()))
    if tap.n >= 2:
        out["zero_norm_fraction"] = tap.tiny.float().mean()
    return out


def _nc1(tap: TapRows) -> Optional[torch.Tensor]:
    try:  # without num_classes, nc1 reads labels.max() (one host sync, on evaluation steps only)
        return M.nc1(tap.z, tap.labels, num_classes=tap.num_classes)
    except ValueError:  # fewer than two classes in this sample: nothing to measure
        return None


def _collapsed_dimensions(tap: TapRows) -> torch.Tensor:
    lam = tap.values["spectrum"]
    cd = M.collapsed_dimensions(lam)
    # every row on one point: every dimension collapsed (see SPREAD_FLOOR)
    return torch.where(lam.sum() <= SPREAD_FLOOR, torch.full_like(cd, float(lam.numel())), cd)


def _alpha_req(tap: TapRows) -> Dict[str, torch.Tensor]:
    fit = M.alpha_req(tap.values["spectrum"])
    return {"alpha_req": fit.alpha, "alpha_req_r2": fit.r2}


def _redundancy(tap: TapRows) -> torch.Tensor:
    # the raw features of the two views, as a redundancy-reduction loss sees them (not normalised rows)
    return M.redundancy(tap.raw, tap.raw_zp)


def _lidar(tap: TapRows) -> torch.Tensor:
    # LiDAR (issue 10): the views of each row (z and its other views, (N, V - 1, D)) are one surrogate class;
    # NaN when any row of any view is non-finite
    z_views = tap.views
    pos_ok = torch.isfinite(z_views).all(dim=2).all(dim=1).view(-1, 1, 1)
    views = torch.cat([tap.z_spec.unsqueeze(1), torch.where(pos_ok, z_views, torch.zeros_like(z_views))], dim=1)
    value = M.lidar(views)
    return torch.where(tap.any_bad | ~pos_ok.all(), torch.full_like(value, float("nan")), value)


# ---------------------------------------------------------------------------------------------- the specs
_SPREAD_HINT = (
    "embeddings are losing spread on the sphere — possible collapse",
    (
        "the learning rate, the loss (for contrastive losses the negatives and the temperature; for "
        "SimSiam/BYOL-style losses the stop-gradient and the predictor) and the augmentations"
    ),
)
_RANK_HINT = (
    "embeddings span fewer and fewer directions — dimensional collapse",
    "weight decay versus augmentation strength, the projector width and the learning rate",
)

#: Every metric, in the config's order (``METRICS``), then the keys logged beside them.
SPECS: Tuple[MetricSpec, ...] = (
    MetricSpec(
        "alignment", "alignment", OVERVIEW, 40,
        "mean |x - x⁺|^alpha between the two views of a pair: how close positives are.",
        "0 (trivially: everything is one point; read it with uniformity)", "small, with uniformity low",
        function=M.alignment, needs=frozenset({"pair"}), worse="rise", presets=CHEAP,
        evaluate=lambda tap: _alignment_rows(tap).mean(), stderr_blocks=8,
        stderr=lambda tap: _se(tap.block_means(_alignment_rows(tap), 8)),
        hint=("positive pairs are drifting apart", "the augmentations and that the two views are paired row by row"),
    ),
    MetricSpec(
        "uniformity", "uniformity", OVERVIEW, 10,
        "log mean exp(-t·|x_i - x_j|²) over pairs of normalised embeddings: how spread out they are.",
        "near 0 (all points in one spot)", "about -4 for t=2 in high dimension (spread over the sphere)",
        function=M.uniformity, collapsed_value=0.0, worse="rise", presets=STANDARD,
        evaluate=lambda tap: tap.uniformity(8)[0], stderr_blocks=8, stderr=_uniformity_se,
        hint=_SPREAD_HINT, advice="spread",
    ),
    MetricSpec(
        "uniformity_pos", "uniformity (paired view)", HEALTH, 120,
        "uniformity of the second view of each pair.", "near 0", "about -4 for t=2",
        function=M.uniformity, needs=frozenset({"pair"}), collapsed_value=0.0, worse="rise",
        evaluate=lambda tap: tap.uniformity_pos(), hint=_SPREAD_HINT, advice="spread",
    ),
    MetricSpec(
        "effective_rank", "effective rank", OVERVIEW, 20,
        "RankMe, exp(entropy) of the normalised singular values: how many dimensions are used.",
        "near 1", "close to the dimension D (biased low when N is not much larger than D)",
        function=M.effective_rank, spectral=True, nan_if_nonfinite=True, collapsed_value=1.0, worse="fall",
        presets=STANDARD, evaluate=lambda tap: M.effective_rank(tap.z_spec), stderr_blocks=4, stderr=_rank_se,
        hint=_RANK_HINT, advice="rank",
    ),
    MetricSpec(
        "effective_rank_centered", "effective rank (centred)", SPECTRUM, 70,
        "effective rank of the mean-centred embeddings (ignores a shared offset).", "near 1", "a large fraction of D",
        function=M.effective_rank, spectral=True, nan_if_nonfinite=True, collapsed_value=1.0, worse="fall",
        evaluate=lambda tap: M.effective_rank(tap.z_spec, center=True), hint=_RANK_HINT, advice="rank",
    ),
    MetricSpec(
        "redundancy", "redundancy (cross-view)", SPECTRUM, 75,
        "mean squared off-diagonal cross-correlation of the two views' batch-standardised features (Barlow Twins' "
        "redundancy term): how much each feature of one view predicts the other features of the other view.",
        "1 (every feature a copy of one)", "a few times 1/N, steady (Barlow Twins, VICReg keep it low)",
        function=M.redundancy, needs=frozenset({"pair"}), collapsed_value=1.0, worse="rise", presets=STANDARD,
        evaluate=_redundancy, advice="rank",
        hint=("the features are becoming copies of each other — the redundancy the loss removes is back (dimensional "
              "collapse)",
              "the redundancy term (Barlow Twins' off-diagonal weight lambda, VICReg's covariance weight), the "
              "projector's batch-norm and width, and the learning rate"),
    ),
    MetricSpec(
        "normalized_std", "normalised std", HEALTH, 110,
        "mean over dimensions of the std over rows of the normalised embeddings.", "0", "near 1/sqrt(D)",
        function=M.normalized_std, collapsed_value=0.0, worse="fall", presets=CHEAP,
        evaluate=lambda tap: tap.col_std.mean(), stderr_blocks=8,
        stderr=_normalized_std_se,
        hint=(
            "embeddings are converging to one direction — possible complete collapse",
            "the learning rate, the loss (the stop-gradient and predictor of SimSiam/BYOL-style losses; the negatives "
            "of contrastive ones) and the augmentations",
        ),
        advice="spread",
    ),
    MetricSpec(
        "mean_cosine", "mean cosine", OVERVIEW, 30,
        "mean cosine similarity between different embeddings of a batch.",
        "near 1 (all point the same way)", "near 0 (about 0.3 for ReLU features)",
        function=M.mean_cosine, collapsed_value=1.0, worse="rise", presets=CHEAP,
        evaluate=_mean_cosine, stderr_blocks=8, stderr=_mean_cosine_se,
        hint=(
            "embeddings are becoming parallel — possible collapse",
            "the learning rate, the loss (the negatives of contrastive losses; the stop-gradient and predictor of "
            "SimSiam/BYOL-style ones) and the augmentations",
        ),
        advice="spread",
    ),
    MetricSpec(
        "dead_dimensions", "dead dimensions", HEALTH, 140,
        "fraction of dimensions that are constant over the batch.", "1", "0",
        function=M.dead_dimensions, collapsed_value=1.0, worse="rise", presets=CHEAP_ONLY,
        evaluate=lambda tap: (tap.col_std < 1e-6).float().mean(),
        hint=(
            "more embedding dimensions are constant",
            "activations before the embedding (dead ReLUs), the learning rate and weight decay",
        ),
    ),
    MetricSpec(
        "collapsed_dimensions", "collapsed dimensions", SPECTRUM, 60,
        "number of covariance eigenvalues below 1e-5 of the largest (Jing et al. 2022).", "D - 1", "0",
        function=M.collapsed_dimensions, spectral=True, nan_if_nonfinite=True, source="spectrum", worse="rise",
        presets=STANDARD, evaluate=_collapsed_dimensions, advice="rank",
        hint=(
            "more embedding dimensions carry (almost) no variance — dimensional collapse",
            "weight decay versus augmentation strength and the projector width",
        ),
    ),
    MetricSpec(
        "spectrum", "spectrum", SPECTRUM, 50,
        "eigenvalues of the covariance of the normalised embeddings (a histogram per step).",
        "one large eigenvalue, the rest near 0", "a slowly decaying spectrum",
        function=M.spectrum, spectral=True, histogram=True, nan_if_nonfinite=True,
        evaluate=lambda tap: M.spectrum(tap.z_spec),
    ),
    MetricSpec(
        "alpha_req", "alpha-ReQ decay", SPECTRUM, 80,
        "power-law decay exponent of the eigenvalue spectrum (Agrawal et al. 2022).",
        "large (fast decay), with a poor fit", "around 1",
        function=M.alpha_req, spectral=True, nan_if_nonfinite=True, source="spectrum", evaluate=_alpha_req,
    ),
    MetricSpec(
        "nonfinite_fraction", "non-finite fraction", HEALTH, 130,
        "fraction of embedding entries that are NaN or infinite.", "above 0 (diverged)", "0",
        function=M.nonfinite_fraction, min_rows=1, worse="rise", presets=CHEAP,
        evaluate=lambda tap: tap.nonfinite_fraction if tap.n else M.nonfinite_fraction(tap.raw),  # no rows: error
        hint=(
            "embeddings contain NaN/Inf values",
            "the loss for NaN, the learning rate, mixed-precision overflow (loss scaling) and the inputs",
        ),
    ),
    MetricSpec(
        "norm_stats", None, HEALTH, 160, "statistics of the raw row norms (logged as its derived keys).",
        function=M.norm_stats, min_rows=1, presets=CHEAP, evaluate=_norm_stats,
    ),
    MetricSpec(
        "nc1", "NC1 (class collapse)", HEALTH, 150,
        "within-class over between-class variability (neural collapse, needs labels).",
        "large (classes mixed)", "small (classes separable)",
        function=M.nc1, needs=frozenset({"labels"}), evaluate=_nc1,
    ),
    MetricSpec(
        "lidar", "LiDAR", SPECTRUM, 100,
        "effective rank of the linear discriminant of the embeddings (Thilak et al. 2024).", "near 1", "large",
        function=M.lidar, needs=frozenset({"pair"}), spectral=True, collapsed_value=1.0, worse="fall",
        evaluate=_lidar,
    ),
    # keys logged beside a metric
    MetricSpec("alpha_req_r2", "alpha-ReQ fit R²", SPECTRUM, 90,
               "R² of the power-law fit behind alpha-ReQ (how much to trust it).", "any", "near 1",
               derived_of="alpha_req", spectral=True, nan_if_nonfinite=True),
    MetricSpec("norm_mean", "norm mean", HEALTH, 170, "mean L2 norm of the raw embeddings.",
               "0 or exploding", "stable over training", derived_of="norm_stats",
               hint=("embeddings are contracting toward the origin -- the road to a constant output",
                     "what keeps the features' variance up (VICReg's variance term), weight decay and the learning "
                     "rate"), advice="spread"),
    MetricSpec("norm_std", "norm std", HEALTH, 180, "std of the L2 norms of the raw embeddings.",
               "0 or exploding", "stable", derived_of="norm_stats"),
    MetricSpec("norm_min", "norm min", HEALTH, 190, "smallest L2 norm of the raw embeddings.", "0", "well above 0",
               derived_of="norm_stats"),
    MetricSpec("norm_max", "norm max", HEALTH, 200, "largest L2 norm of the raw embeddings.", "exploding", "stable",
               derived_of="norm_stats"),
    MetricSpec("zero_norm_fraction", None, HEALTH, 210, "share of rows with an L2 norm at most NORM_FLOOR (1e-6).",
               "1", "0", derived_of="norm_stats", collapsed_value=1.0, worse="rise"),
    # the assignment head's metrics (issue 18; spherewatch.metrics.head, logged by head taps)
    MetricSpec(
        "teacher_entropy", "teacher entropy", HEAD, 105,
        "mean per-sample entropy of the teacher's assignment over the K prototypes, / log K (DINO Fig. 7).",
        "1 (uniform output: every sample spread evenly over every prototype)",
        "well below 1 (a sharp teacher, about 0.1-0.5)", function=M.teacher_entropy, head=True, collapsed_value=1.0,
        worse="rise",
        hint=("the teacher's output is becoming uniform — every sample is assigned evenly to every prototype "
              "(uniform-output collapse)",
              "the teacher's temperature and its warm-up (too high: no sharpening; DINO uses 0.04 -> 0.07), the "
              "centring (a centre momentum too high or the centre not updated), and the EMA momentum of the "
              "teacher"),
    ),
    MetricSpec(
        "usage_entropy", "prototype usage entropy", HEAD, 106,
        "entropy of the batch-mean assignment, / log K: how evenly the prototypes are used.",
        "0 (one prototype takes every sample)", "high (many prototypes in use)", function=M.usage_entropy,
        head=True, collapsed_value=0.0, worse="fall",
        hint=(_FEWER_PROTOTYPES, _ONE_PROTOTYPE_CHECK),
    ),
    MetricSpec(
        "prototypes_in_use", "prototypes in use", HEAD, 107,
        "exp(entropy of the batch-mean assignment): the number of prototypes in use (1 to K).",
        "1 (one prototype)", "a large share of K (or of the rows, when rows < K)", function=M.prototypes_in_use,
        head=True, collapsed_value=1.0, worse="fall",
        hint=(_FEWER_PROTOTYPES, _ONE_PROTOTYPE_CHECK),
    ),
    MetricSpec(
        "max_mean_probability", "largest mean assignment", HEAD, 108,
        "the largest entry of the batch-mean assignment: the share of all samples taken by one prototype.",
        "1 (one prototype takes every sample)", "a small multiple of 1 / (prototypes in use)",
        function=M.max_mean_probability, head=True, collapsed_value=1.0, worse="rise",
        hint=("one prototype takes most of the samples (one-prototype collapse)", _ONE_PROTOTYPE_CHECK),
    ),
    MetricSpec(
        "teacher_student_kl", "teacher-student KL", HEAD, 109,
        "mean KL(teacher || student) over rows, nats: what the student can still learn from the teacher.",
        "0 (the teacher carries no information: either collapse mode)", "well above 0 (order 0.1-1)",
        function=M.teacher_student_kl, head=True, collapsed_value=0.0, worse="fall",
    ),
    MetricSpec(
        "dead_prototype_fraction", "dead prototypes", HEAD, 115,
        "fraction of the K prototypes that are no sampled row's argmax (at least 1 - rows/K).",
        "1 - 1/K (one prototype)", "stable, low when rows >> K", function=M.dead_prototype_fraction, head=True,
    ),
)

_BY_NAME: Dict[str, MetricSpec] = {s.name: s for s in SPECS}
_DERIVED: Dict[str, Tuple[str, ...]] = {}
for _s in SPECS:
    if _s.derived_of is not None:
        _DERIVED[_s.derived_of] = _DERIVED.get(_s.derived_of, ()) + (_s.name,)


def spec(name: str) -> Optional[MetricSpec]:
    """The spec of a metric or derived key (``None`` when unknown)."""
    return _BY_NAME.get(name)


def metric_specs() -> Tuple[MetricSpec, ...]:
    """The metrics of embedding taps (not the derived keys, not the head metrics), in the config's order."""
    return tuple(s for s in SPECS if s.derived_of is None and not s.head)


def head_specs() -> Tuple[MetricSpec, ...]:
    """The metrics of head taps (:mod:`spherewatch.heads`), in display order."""
    return tuple(s for s in SPECS if s.head)


def key_specs() -> Tuple[MetricSpec, ...]:
    """Every key with a title (metrics and derived keys), in display order: category, then priority."""
    shown = [s for s in SPECS if s.title is not None]
    return tuple(sorted(shown, key=lambda s: (CATEGORIES.index(s.category), s.priority)))


def preset(name: str) -> Tuple[str, ...]:
    """The metrics of a cost preset, in the config's order."""
    if name not in PRESET_NAMES:
        raise KeyError(f"Unknown preset {name!r}: use one of {list(PRESET_NAMES)}.")
    return tuple(s.name for s in metric_specs() if name in s.presets)


def hint(metric: str) -> Tuple[str, str]:
    """``(what a degradation of metric means, what to check)``; :data:`GENERIC_HINT` for metrics without one."""
    s = _BY_NAME.get(metric)
    return s.hint if s is not None and s.hint is not None else GENERIC_HINT


def advice_group(group: str) -> Tuple[str, ...]:
    """The metrics of an advice group (``"spread"``, ``"rank"``) of :mod:`spherewatch.alerts.advice`."""
    return tuple(s.name for s in SPECS if s.advice == group)


def collapsed_at_top() -> FrozenSet[str]:
    """Metrics whose collapsed value is the top of their range (healthy values lie below it; report thresholds)."""
    return frozenset(s.name for s in SPECS if s.collapsed_value is not None and s.worse == "rise")
