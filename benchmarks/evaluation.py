"""Cost of one evaluation (issue 21): ``compute_tap_metrics`` per preset against the floor measured in the same run.

Run: ``make bench-eval`` or ``.venv/bin/python benchmarks/evaluation.py [--n 4096] [--d 512 2048] [--repeats 5]``.

For each preset (``cheap``, ``standard``, ``full``) at N rows and each D, one thread (``torch.set_num_threads(1)``):

* ``eval``: :func:`spherewatch.compute.compute_tap_metrics` called as the Monitor calls it (a paired view, so
  alignment and the pair metrics run; spectral metrics on; no labels);
* ``before``: the same call on the evaluation as it was before issue 21 (``benchmarks/_baseline_compute.py``, a
  verbatim copy of ``monitor/compute.py`` at 222587e, calling the same public metric functions);
* ``floor``: the least work the preset needs, measured in the same run: for ``cheap`` one pass that L2-normalises
  the rows; for ``standard`` / ``full`` that pass plus one fp64 ``D x D`` Gram of the normalised, centred rows, its
  ``eigvalsh`` and the exact-uniformity kernel (the upper half of the ``N x N`` Gram of the normalised rows and its
  ``exp``).
* ``needs``: what the preset's metrics cannot share, each done once: ``cheap`` normalises both views (alignment
  needs the paired view); ``standard`` adds one fp64 moments pass, **two** ``eigvalsh`` (RankMe's uncentred Gram
  and the centred spectrum are different matrices), the uniformity kernel and the two standardised views' cross
  product (``redundancy``); ``full`` adds the paired view's
  uniformity kernel and LiDAR (its own within-sample Gram, ``eigh`` and ``eigvalsh``).

Printed: the medians over ``--repeats`` rounds (the implementations alternate inside each round, so load on the
machine hits all of them alike), ``eval / floor``, ``eval / needs`` and ``before / eval`` (the speed-up).
Targets: ``cheap`` <= 3x its floor, ``standard`` / ``full`` <= 1.3x.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _baseline_compute as before  # noqa: E402 - benchmarks/ is on sys.path

from spherewatch.compute import compute_tap_metrics  # noqa: E402
from spherewatch.config import PRESETS  # noqa: E402
from spherewatch.metrics import lidar  # noqa: E402
from spherewatch.metrics._linalg import centred_moments64, eigvalsh64, rows_gram64  # noqa: E402
from spherewatch.metrics.uniformity import _upper_kernel_sum  # noqa: E402

TARGETS = {"cheap": 3.0, "standard": 1.3, "full": 1.3}


def rows(n: int, d: int, seed: int = 0):
    """Rows with a power-law spectrum along random directions (``sigma_i ~ i^-0.5``) and a noisy paired view."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    scale = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    z = (torch.randn(n, d, generator=g) * scale) @ basis.T
    return z.contiguous(), (z + 0.1 * torch.randn(n, d, generator=g) * scale.mean()).contiguous()


def _floor_cheap(z: torch.Tensor) -> None:
    F.normalize(z, dim=1)


def _floor_spectral(z: torch.Tensor) -> None:
    u = F.normalize(z, dim=1)
    eigvalsh64(rows_gram64(u, normalize=False, center=True, side="features"))
    _upper_kernel_sum(u, 2.0, None)


def _needs(preset: str, z: torch.Tensor, z_pos: torch.Tensor) -> None:
    """The work the preset's metrics cannot share (their own passes and decompositions), done once each: both
    views normalised; ``standard``: + one fp64 moments pass, the two eigvalsh (RankMe's uncentred Gram and the
    centred spectrum are different matrices), the uniformity kernel and the cross-view redundancy's product;
    ``full``: + the paired view's uniformity kernel and LiDAR."""
    u, up = F.normalize(z, dim=1), F.normalize(z_pos, dim=1)
    if preset == "cheap":
        return
    c, m = centred_moments64(z)
    eigvalsh64(c)
    eigvalsh64(torch.addr(c, m, m, alpha=z.shape[0]))
    _upper_kernel_sum(u, 2.0, None)
    # the cross-view redundancy: both raw views standardised over the batch, one cross product (the smaller side)
    a, b = (z - z.mean(0)) / z.std(0), (z_pos - z_pos.mean(0)) / z_pos.std(0)
    if z.shape[0] < z.shape[1]:
        (a @ a.T).mul_(b @ b.T).sum()
    else:
        (a.T @ b).square().sum()
    if preset == "full":
        _upper_kernel_sum(up, 2.0, None)
        lidar(torch.stack([z, z_pos], dim=1))


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(n: int, d: int, presets: List[str], repeats: int) -> List[Dict[str, float]]:
    z, z_pos = rows(n, d)
    out = []
    for preset in presets:
        names = PRESETS[preset]
        floor = _floor_cheap if preset == "cheap" else _floor_spectral
        impls = {
            "eval": lambda names=names: compute_tap_metrics(z, z_pos, None, names, spectral=True, failures={}),
            "before": lambda names=names: before.compute_tap_metrics(z, z_pos, None, names, spectral=True,
                                                                      failures={}),
            "floor": lambda floor=floor: floor(z),
            "needs": lambda preset=preset: _needs(preset, z, z_pos),
        }
        for fn in impls.values():  # warm-up
            fn()
        times: Dict[str, List[float]] = {k: [] for k in impls}
        for r in range(repeats):
            order = list(impls) if r % 2 == 0 else list(reversed(impls))
            for k in order:
                times[k].append(_timed(impls[k]))
        med = {k: statistics.median(v) for k, v in times.items()}
        med.update(preset=preset, d=d, n=n)
        out.append(med)
        _print_row(med)
    return out


def _print_row(m: Dict[str, float]) -> None:
    ratio = m["eval"] / m["floor"]
    ok = "yes" if ratio <= TARGETS[m["preset"]] else "no"
    print(f"| {m['preset']:8s} | {m['n']:5d} | {m['d']:5d} | {m['eval']:7.3f} | {m['floor']:7.3f} | {ratio:5.2f}x "
          f"(<= {TARGETS[m['preset']]}x: {ok}) | {m['needs']:7.3f} | {m['eval'] / m['needs']:5.2f}x | "
          f"{m['before']:7.3f} | {m['before'] / m['eval']:5.1f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--presets", nargs="+", default=["cheap", "standard", "full"], choices=sorted(PRESETS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} alternating rounds (s)")
    print("| preset | N | D | eval s | floor s | eval / floor | needs s | eval / needs | before s | speed-up |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for d in args.d:
        measure(args.n, d, args.presets, args.repeats)


if __name__ == "__main__":
    main()
