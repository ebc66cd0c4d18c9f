"""Time and peak extra memory of spherewatch's uniformity and effective rank against the reference
implementations (Wang & Isola's pdist ``uniform_loss``; RankMe from ``torch.linalg.svdvals``), side by side.

Run: ``make bench`` or ``.venv/bin/python benchmarks/metrics.py [--quick] [--threads 1]``.

Each measurement runs in a fresh subprocess so that peak memory is its own: the child builds the input,
resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the function and reports
``VmHWM - VmRSS(before)``. Time is the best of ``--repeats`` runs after one warm-up (references slower than
5 s run once). Threads are pinned (default 1): with 2 OpenMP threads under load LAPACK timings here swing 40x.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _peak import measure  # noqa: E402 - benchmarks/ is on sys.path (script dir)

IMPLS = {
    "uniformity": ("spherewatch", "pdist reference"),
    "effective_rank": ("spherewatch", "svdvals reference"),
}




def _child(metric: str, impl: str, n: int, d: int, threads: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    import spherewatch.metrics as M

    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    if metric == "uniformity":
        fn = (lambda: M.uniformity(x, method="exact")) if impl == "spherewatch" else (
            lambda: torch.pdist(F.normalize(x, dim=1), p=2).pow(2).mul(-2.0).exp().mean().log()
        )
    else:
        def ref():
            s = torch.linalg.svdvals(F.normalize(x, dim=1))
            p = s / s.sum()
            return torch.exp(-(p * torch.log(p)).nansum())

        fn = (lambda: M.effective_rank(x)) if impl == "spherewatch" else ref
    small = torch.randn(64, 16)
    M.uniformity(small), M.effective_rank(small)  # library warm-up outside the measured peak
    out, best, peak_mb = measure(fn, repeats)
    return {"time": best, "peak_mb": peak_mb, "value": float(out)}


def _run(metric, impl, n, d, threads, repeats):
    out = subprocess.run(
        [sys.executable, __file__, "--child", metric, impl, str(n), str(d), str(threads), str(repeats)],
        capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="N in {1024, 4096} only")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        metric, impl, n, d, threads, repeats = args.child
        print(json.dumps(_child(metric, impl, int(n), int(d), int(threads), int(repeats))))
        return
    ns = (1024, 4096) if args.quick else (1024, 4096, 8192, 16384)
    print(f"threads={args.threads}; time = best of runs; peak = extra peak RSS in a fresh process\n")
    header = (
        f"{'metric':<15}{'N':>7}{'D':>5} | {'ours s':>8}{'ref s':>9}{'speed-up':>9} | "
        f"{'ours MB':>8}{'ref MB':>9}{'mem ratio':>10} | {'|diff|':>8}"
    )
    print(header)
    print("-" * len(header))
    for metric, (ours_name, ref_name) in IMPLS.items():
        for d in (128, 512):
            for n in ns:
                ours = _run(metric, ours_name, n, d, args.threads, args.repeats)
                ref = _run(metric, ref_name, n, d, args.threads, args.repeats)
                ratio_t = ref["time"] / ours["time"]
                ratio_m = ref["peak_mb"] / max(ours["peak_mb"], 1e-9)
                print(
                    f"{metric:<15}{n:>7}{d:>5} | {ours['time']:>8.3f}{ref['time']:>9.3f}{ratio_t:>8.1f}x | "
                    f"{ours['peak_mb']:>8.1f}{ref['peak_mb']:>9.1f}{ratio_m:>9.1f}x | "
                    f"{abs(ours['value'] - ref['value']):>8.1e}",
                    flush=True,
                )
    print("\nTargets (issue 2): uniformity >= 3.5x at N=8192, D=128; <= 128 MB extra at N=16384;"
          " effective rank >= 2x at N=8192, D=512.")


if __name__ == "__main__":
    main()
