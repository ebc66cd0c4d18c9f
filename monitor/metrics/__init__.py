"""Functional embedding-geometry metrics: pure torch, any device, any float dtype.

What every function does (the docstrings give formulas, shapes and examples):

- **Precision.** Inputs are upcast to fp32 (fp64 stays fp64). Eigen-decompositions and everything around them
  (``effective_rank``, ``effective_rank_from_gram``, ``spectrum``, ``collapsed_dimensions``, ``alpha_req``,
  ``nc1``, ``lidar``) run on fp64 Grams with fp64 solvers: within 1e-3 (measured ~1e-5) of an fp64 SVD of the same
  rows at any D (``effective_rank`` explains the choice).
- **Normalisation.** Rows are L2-normalised internally (a zero row stays zero, never NaN) by ``alignment``,
  ``uniformity``, ``uniformity_estimate``, ``effective_rank`` (unless ``normalize=False``), ``normalized_std``,
  ``mean_cosine``, ``dead_dimensions``, ``spectrum``, ``collapsed_dimensions``, ``alpha_req``, ``nc1`` and ``lidar``
  (unless ``normalize=False``). ``norm_stats`` and ``nonfinite_fraction`` look at the raw rows, and
  ``effective_rank_from_gram`` / ``spectrum_from_moments`` take whatever the Gram or moments were built from.
- **Shared work.** Inside :func:`spherewatch.metrics._shared.shared_work` (the Monitor opens one per tap and
  evaluation) the functions called on the same tensor normalise it once and share one fp64 pass and one
  decomposition per Gram (``effective_rank(center=True)`` and ``spectrum`` read the same eigenvalues); outside it
  each call does its own work. Values are the same either way (to fp64 round-off).
- **Shapes.** 0-d tensors on the input's device, except ``spectrum`` / ``spectrum_from_moments`` (``(D,)``),
  ``alpha_req`` (``AlphaReQ(alpha, r2)``, two 0-d tensors), ``norm_stats`` (a dict of four 0-d tensors) and
  ``uniformity_estimate`` (a ``UniformityEstimate``).
- **Assignment heads.** :mod:`spherewatch.metrics.head` (``teacher_entropy``, ``usage_entropy``,
  ``prototypes_in_use``, ``max_mean_probability``, ``teacher_student_kl``, ``dead_prototype_fraction``) read
  ``(B, K)`` logits or probabilities of a prototype head (DINO, iBOT, SwAV, MSN), not embeddings.
- **Host synchronisation.** The O(N D) and pairwise metrics never synchronise, so the Monitor batches the
  read-back. A metric with an eigen-decomposition reads one flag back per decomposition (is the result finite?;
  CUDA's solvers synchronise to check their status anyway): when the device solver raised or returned non-finite
  values for a finite input, it is recomputed on the CPU in fp64 and a :class:`DecompositionFallbackWarning` is
  emitted. ``nc1`` without ``num_classes`` also reads ``labels.max()`` (one more sync).
"""
from spherewatch.metrics._linalg import DecompositionFallbackWarning, gram64
from spherewatch.metrics._validation import normalize_rows
from spherewatch.metrics.alignment import alignment
from spherewatch.metrics.effective_rank import effective_rank, effective_rank_from_gram
from spherewatch.metrics.head import (
    dead_prototype_fraction,
    head_probabilities,
    max_mean_probability,
    prototypes_in_use,
    teacher_entropy,
    teacher_student_kl,
    usage_entropy,
)
from spherewatch.metrics.indicators import dead_dimensions, mean_cosine, nonfinite_fraction, norm_stats, normalized_std
from spherewatch.metrics.lidar import lidar
from spherewatch.metrics.nc1 import nc1
from spherewatch.metrics.redundancy import redundancy, redundancy_from_moments
from spherewatch.metrics.spectrum import AlphaReQ, alpha_req, collapsed_dimensions, spectrum, spectrum_from_moments
from spherewatch.metrics.uniformity import UniformityEstimate, pair_kernel_sum, uniformity, uniformity_estimate

__all__ = [
    "alignment",
    "uniformity",
    "uniformity_estimate",
    "UniformityEstimate",
    "effective_rank",
    "effective_rank_from_gram",
    "normalized_std",
    "mean_cosine",
    "dead_dimensions",
    "nonfinite_fraction",
    "norm_stats",
    "spectrum",
    "spectrum_from_moments",
    "collapsed_dimensions",
    "alpha_req",
    "AlphaReQ",
    "nc1",
    "lidar",
    "redundancy",
    # assignment heads (DINO, iBOT, SwAV, MSN): (B, K) teacher / student logits or probabilities
    "teacher_entropy",
    "usage_entropy",
    "prototypes_in_use",
    "max_mean_probability",
    "teacher_student_kl",
    "dead_prototype_fraction",
    "head_probabilities",
    "DecompositionFallbackWarning",
    # building blocks of streamed metrics (spherewatch analyze): Grams and pair sums add up over chunks
    "normalize_rows",
    "gram64",
    "pair_kernel_sum",
    "redundancy_from_moments",
]
