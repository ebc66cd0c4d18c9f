"""How the metric kernels' cost grows with N and D, against the reference implementations, side by side.

Three tables:

1. ``uniformity`` exact (blocked i<j half of the Gram) against the reference ``torch.pdist`` ``uniform_loss`` of
   Wang & Isola, for N up to 32768 and D in {128, 512}. Targets: >= 3.5x faster at N=8192, D=128; <= 128 MB extra
   memory at N=16384, D=128.
2. ``uniformity_estimate`` (pooled within-chunk pairs) for N = 1e4, 1e5, 1e6 rows (D=128): time, peak extra
   memory, value and its standard error, with the exact value beside where it is affordable (N=1e4).
3. Effective rank streamed from a Gram accumulated over K batches (``G += z^T z`` per batch, then ``eigvalsh``)
   against keeping the K batches and decomposing their concatenation: spherewatch's one-shot
   ``effective_rank`` (Gram of the concatenation) and the reference RankMe (``svdvals`` of the concatenation).

Run: ``.venv/bin/python benchmarks/scale.py [--quick] [--threads 1]`` (about 4 minutes on 2 cores; --quick < 1).

Method (as ``benchmarks/metrics.py``): every measurement runs in a fresh subprocess, so peak memory is its own.
The child builds its input, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the function and
reports ``VmHWM - VmRSS(before)``; time is the best of ``--repeats`` runs after a first (measured) one; functions
slower than 5 s run once. Threads are pinned (default 1; with 2 OpenMP threads under load LAPACK timings here swing
40x). Input memory is not counted: the streamed effective rank reads its batches from a tensor built before the
reset, while both concatenation routes must copy them into one ``(N, D)`` matrix, which is counted, because holding
all K batches is the price of not streaming.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

from _peak import measure  # noqa: E402 - benchmarks/ is on sys.path (script dir)


def _measure(fn, repeats: int) -> dict:
    """Peak extra RSS of the first call, best time over the first call and ``repeats`` more (if it is fast)."""
    out, best, peak_mb = measure(fn, repeats)
    if isinstance(out, tuple):
        value, extra = float(out[0]), float(out[1])
    else:
        value, extra = float(out), float("nan")
    return {"time": best, "peak_mb": peak_mb, "value": value, "extra": extra}


def _child(kind: str, impl: str, n: int, d: int, k: int, threads: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    import spherewatch.metrics as M

    small = torch.randn(64, 16)
    M.uniformity(small), M.effective_rank(small), M.uniformity_estimate(small, chunk_size=16)  # warm-up, unmeasured
    torch.linalg.svdvals(small)
    gen = torch.Generator().manual_seed(0)
    if kind == "uniformity":
        x = torch.randn(n, d, generator=gen)
        if impl == "exact":
            fn = lambda: M.uniformity(x, method="exact")  # noqa: E731
        else:  # Wang & Isola's uniform_loss
            fn = lambda: torch.pdist(F.normalize(x, dim=1), p=2).pow(2).mul(-2.0).exp().mean().log()  # noqa: E731
        return _measure(fn, repeats)
    if kind == "pooled":
        x = torch.randn(n, d, generator=gen)
        if impl == "pooled":
            return _measure(lambda: tuple(M.uniformity_estimate(x, chunk_size=k)), repeats)
        return _measure(lambda: M.uniformity(x, method="exact"), repeats)
    # effective rank over K batches of n rows
    from spherewatch.metrics.effective_rank import effective_rank_from_gram

    batches = torch.randn(k, n, d, generator=gen)  # what the model produced; not counted

    def streamed():
        gram = torch.zeros(d, d, dtype=torch.float64)  # fp64: an fp32 Gram loses the spectrum's tail (issue 10)
        for b in range(k):
            z = F.normalize(batches[b].double(), dim=1)
            gram.addmm_(z.T, z)  # batch b can be dropped now: only the D x D Gram is kept
        return effective_rank_from_gram(gram)

    def concat_gram():
        return M.effective_rank(torch.cat(list(batches)))

    def concat_svdvals():  # RankMe as usually written (Garrido et al.), on the concatenation
        s = torch.linalg.svdvals(F.normalize(torch.cat(list(batches)), dim=1))
        p = s / s.sum()
        return torch.exp(-(p * torch.log(p)).nansum())

    fn = {"streamed": streamed, "concat_gram": concat_gram, "svdvals": concat_svdvals}[impl]
    return _measure(fn, repeats)


def _run(kind: str, impl: str, n: int, d: int, k: int, threads: int, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, impl, str(n), str(d), str(k), str(threads), str(repeats)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  [{kind} {impl} N={n} D={d}: failed: {tail}]", flush=True)
        nan = float("nan")
        return {"time": nan, "peak_mb": nan, "value": nan, "extra": nan}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_n(n: int) -> str:
    return f"{n:,}"


def uniformity_table(args) -> dict:
    sizes = [(128, (2048, 8192, 16384)), (512, (2048, 8192))] if args.quick else [
        (128, (2048, 4096, 8192, 16384, 32768)), (512, (2048, 8192, 16384))]
    print("### 1. Uniformity, exact: spherewatch (blocked i<j Gram) vs reference (torch.pdist uniform_loss)\n")
    print("| N | D | ours s | pdist s | speed-up | ours MB | pdist MB | memory ratio | abs diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    found = {}
    for d, ns in sizes:
        for n in ns:
            ours = _run("uniformity", "exact", n, d, 0, args.threads, args.repeats)
            ref = _run("uniformity", "pdist", n, d, 0, args.threads, args.repeats)
            found[(n, d)] = (ours, ref)
            mem_ratio = ref["peak_mb"] / max(ours["peak_mb"], 1e-9)
            print(f"| {_fmt_n(n)} | {d} | {ours['time']:.3f} | {ref['time']:.3f} | {ref['time'] / ours['time']:.1f}x | "
                  f"{ours['peak_mb']:.1f} | {ref['peak_mb']:.1f} | {mem_ratio:.1f}x | "
                  f"{abs(ours['value'] - ref['value']):.1e} |", flush=True)
    return found


def pooled_table(args) -> dict:
    ns = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    d, chunk = 128, 2048
    print(f"\n### 2. Uniformity, pooled estimator (chunk_size={chunk}), D={d}: i.i.d. Gaussian rows\n")
    print("| N | input MB | time s | peak extra MB | value | stderr | exact value | abs diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    found = {}
    for n in ns:
        est = _run("pooled", "pooled", n, d, chunk, args.threads, 0 if n >= 1_000_000 else args.repeats)
        exact = _run("pooled", "exact", n, d, chunk, args.threads, 0) if n <= 10_000 else None
        found[n] = est
        ex_v = f"{exact['value']:.6f}" if exact else "(not computed)"
        diff = f"{abs(exact['value'] - est['value']):.1e}" if exact else ""
        print(f"| {_fmt_n(n)} | {n * d * 4 / 2**20:.0f} | {est['time']:.2f} | {est['peak_mb']:.1f} | "
              f"{est['value']:.6f} | {est['extra']:.1e} | {ex_v} | {diff} |", flush=True)
    return found


def rank_table(args) -> None:
    batch = 4096
    cases = [(128, (4, 16)), (512, (4,))] if args.quick else [(128, (4, 16, 64)), (512, (4, 16))]
    print(f"\n### 3. Effective rank of K batches of {batch} rows: streamed Gram vs the concatenation\n")
    print("| K | N | D | streamed s | concat+Gram s | concat+svdvals s | speed-up vs svdvals | streamed MB | "
          "concat+Gram MB | concat+svdvals MB | abs diff vs svdvals |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d, ks in cases:
        for k in ks:
            st = _run("rank", "streamed", batch, d, k, args.threads, args.repeats)
            cg = _run("rank", "concat_gram", batch, d, k, args.threads, args.repeats)
            sv = _run("rank", "svdvals", batch, d, k, args.threads, args.repeats)
            print(f"| {k} | {_fmt_n(k * batch)} | {d} | {st['time']:.3f} | {cg['time']:.3f} | {sv['time']:.3f} | "
                  f"{sv['time'] / st['time']:.1f}x | {st['peak_mb']:.1f} | {cg['peak_mb']:.1f} | {sv['peak_mb']:.1f} | "
                  f"{abs(st['value'] - sv['value']):.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 1 minute)")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, impl, n, d, k, threads, repeats = args.child
        print(json.dumps(_child(kind, impl, int(n), int(d), int(k), int(threads), int(repeats))))
        return
    import torch

    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, threads={args.threads}; time = best of runs; MB = extra peak RSS in a fresh "
          "process (input excluded)\n")
    uni = uniformity_table(args)
    pooled = pooled_table(args)
    rank_table(args)
    print(f"\nTotal {time.perf_counter() - t0:.0f} s.\n")
    ours, ref = uni.get((8192, 128), (None, None))
    if ours is not None:
        speed = ref["time"] / ours["time"]
        print(f"Target: uniformity exact >= 3.5x faster than pdist at N=8192, D=128: {speed:.1f}x "
              f"({'met' if speed >= 3.5 else 'NOT met'})")
    ours16 = uni.get((16384, 128), (None, None))[0]
    if ours16 is not None:
        mb = ours16["peak_mb"]
        print(f"Target: uniformity exact <= 128 MB extra at N=16384, D=128: {mb:.1f} MB "
              f"({'met' if mb <= 128 else 'NOT met'})")
    small, big = min(pooled), max(pooled)
    est = pooled[big]
    # bounded: the peak may grow only by the row permutation (8 bytes a row) beyond the small-N peak, plus slack
    allowed = pooled[small]["peak_mb"] + big * 8 / 2**20 + 32
    bounded = math.isfinite(est["peak_mb"]) and est["peak_mb"] <= allowed
    print(f"Pooled estimator at N={_fmt_n(big)} (input {big * 128 * 4 / 2**20:.0f} MB): {est['time']:.1f} s, "
          f"{est['peak_mb']:.0f} MB extra vs {pooled[small]['peak_mb']:.0f} MB at N={_fmt_n(small)} "
          f"({'bounded' if bounded else 'NOT bounded'}: allowed {allowed:.0f} MB), stderr {est['extra']:.1e}")


if __name__ == "__main__":
    main()
