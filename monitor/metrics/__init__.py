"""Functional embedding-geometry metrics: pure torch, any device, any float dtype (computed in fp32).

Every function L2-normalises rows internally (zero rows stay zero, never NaN), returns 0-d tensors on the
input's device and never synchronises with the host, so the Monitor can batch the read-back.
"""
from spherewatch.metrics.alignment import alignment
from spherewatch.metrics.effective_rank import effective_rank, effective_rank_from_gram
from spherewatch.metrics._linalg import DecompositionFallbackWarning
from spherewatch.metrics.indicators import dead_dimensions, mean_cosine, nonfinite_fraction, norm_stats, normalized_std
from spherewatch.metrics.lidar import lidar
from spherewatch.metrics.nc1 import nc1
from spherewatch.metrics.spectrum import AlphaReQ, alpha_req, collapsed_dimensions, spectrum, spectrum_from_moments
from spherewatch.metrics.uniformity import UniformityEstimate, uniformity, uniformity_estimate

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
    "DecompositionFallbackWarning",
]
