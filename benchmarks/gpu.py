"""GPU figures: metric kernels at N=65,536, D=2,048 on bf16 inputs, and the monitor's overhead in a GPU training loop.

Run on a CUDA machine: ``.venv/bin/python benchmarks/gpu.py`` (a few minutes on one GPU). Without CUDA it prints
"CUDA not available" and exits 0. ``--device cpu --n 4096 --d 256 --image 16 --batch 64 --steps 100 --reps 2``
runs the same code on the CPU at a small size, to check the script (those are not GPU figures).

1. Kernels: ``uniformity`` exact and pooled (with its standard error), ``effective_rank``, ``spectrum``, and the
   ``standard`` / ``full`` presets' per-tap compute (what one evaluation runs, with a paired view), on bf16 input
   (upcast to fp32; the decompositions run on fp64 Grams). Beside them the references: Wang & Isola's
   ``torch.pdist`` uniformity and RankMe from ``torch.linalg.svdvals``, both on the fp32 normalised rows. Time:
   best of a first call and ``--repeats`` more (none when the first takes over 5 s), each bracketed by
   ``torch.cuda.synchronize()``. Memory: peak of
   ``torch.cuda.max_memory_allocated()`` during the first call above what was allocated before it (the input
   excluded). A reference that runs out of memory is reported as such.
2. Training loop: a SimCLR-style ResNet-like CNN on 32x32 images (bf16 autocast, batch 512, two views, NT-Xent,
   SGD), run bare, with the monitor at its defaults (every 50 steps, ``standard`` preset, JSONL sink) and with the
   ``full`` preset, interleaved over ``--reps`` rounds in rotated order after a warm-up round; median wall-time
   ratios against the bare run of the same round. Each run ends with ``torch.cuda.synchronize()``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bench(fn, device, repeats: int) -> dict:
    """Peak memory above the baseline (CUDA only) of the first call, best time of it and ``repeats`` more calls
    (a first call slower than 5 s is not repeated)."""
    import torch

    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" else float("nan")
        for _ in range(repeats if best < 5.0 else 0):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    except torch.cuda.OutOfMemoryError:
        return {"time": float("nan"), "peak_mb": float("nan"), "value": "out of memory"}
    except RuntimeError as exc:  # e.g. a size limit of a reference kernel
        return {"time": float("nan"), "peak_mb": float("nan"), "value": f"failed: {str(exc).splitlines()[0][:60]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if isinstance(out, dict):
        value = ", ".join(f"{k}={float(v):.4g}" for k, v in list(out.items())[:3]) + f" (+{max(len(out) - 3, 0)})"
    elif isinstance(out, tuple):
        value = f"{float(out[0]):.6f} ± {float(out[1]):.1e}"
    else:
        value = f"{float(out):.6f}"
    return {"time": best, "peak_mb": peak, "value": value}


def _warm_up(device) -> None:
    """Library handles (cuBLAS, cuSOLVER) and lazy imports, outside every measurement."""
    import torch

    import spherewatch.metrics as M

    small = torch.randn(256, 64, device=device)
    M.uniformity(small), M.effective_rank(small), M.spectrum(small), torch.linalg.svdvals(small)
    torch.pdist(small)
    _sync(device)


def kernels(args, device) -> None:
    import torch
    import torch.nn.functional as F

    import spherewatch.metrics as M
    from spherewatch.compute import compute_tap_metrics
    from spherewatch.config import PRESETS

    n, d = args.n, args.d
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, device=device, generator=gen).to(torch.bfloat16)
    x_pos = (x.float() + 0.3 * torch.randn(n, d, device=device, generator=gen)).to(torch.bfloat16)
    print(f"### Metric kernels, N={n:,}, D={d:,}, bf16 input ({n * d * 2 / 2**20:.0f} MB) on {_device_name(device)}\n")
    _warm_up(device)
    print("| kernel | time s | peak extra MB | value |")
    print("|---|---:|---:|---|")

    def rankme_svdvals():
        s = torch.linalg.svdvals(F.normalize(x.float(), dim=1))
        p = s / s.sum()
        return torch.exp(-(p * torch.log(p)).nansum())

    rows = [
        ("uniformity, exact (spherewatch)", lambda: M.uniformity(x, method="exact")),
        ("uniformity, pooled, chunk 2048 (spherewatch)", lambda: tuple(M.uniformity_estimate(x))),
        ("uniformity, torch.pdist reference (fp32)",
         lambda: torch.pdist(F.normalize(x.float(), dim=1), p=2).pow(2).mul(-2.0).exp().mean().log()),
        ("effective_rank (spherewatch, fp64 Gram + eigvalsh)", lambda: M.effective_rank(x)),
        ("effective_rank, svdvals reference (fp32)", rankme_svdvals),
        ("spectrum (spherewatch)", lambda: M.spectrum(x)[0]),
        ("standard preset compute (one tap, paired)",
         lambda: compute_tap_metrics(x, x_pos, None, PRESETS["standard"], spectral=True)[0]),
        ("full preset compute (one tap, paired)",
         lambda: compute_tap_metrics(x, x_pos, None, PRESETS["full"], spectral=True)[0]),
    ]
    for name, fn in rows:
        r = _bench(fn, device, args.repeats)
        print(f"| {name} | {r['time']:.3f} | {r['peak_mb']:.0f} | {r['value']} |", flush=True)
    tf32 = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else False
    print(f"\n(torch.backends.cuda.matmul.allow_tf32={tf32}; the kernels compute in fp32)")


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


class _Setup:
    """A ResNet-like encoder + SimCLR projection head, its optimizer and a synthetic image set, on ``device``."""

    def __init__(self, args, device) -> None:
        import torch
        import torch.nn as nn

        torch.manual_seed(0)
        self.gen = torch.Generator(device=device).manual_seed(1)

        def stage(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )

        w = args.width
        backbone = nn.Sequential(stage(3, w, 1), stage(w, 2 * w, 2), stage(2 * w, 4 * w, 2), stage(4 * w, 8 * w, 2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        projector = nn.Sequential(nn.Linear(8 * w, 2048), nn.BatchNorm1d(2048), nn.ReLU(inplace=True),
                                  nn.Linear(2048, args.dim))
        self.model = nn.Sequential(backbone, projector).to(device).to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
        self.images = torch.rand(4096, 3, args.image, args.image, device=device, generator=self.gen)
        self.device = device


def _train(config: str, args, setup: _Setup, log_dir: str) -> dict:
    import torch
    import torch.nn.functional as F

    model, opt, images, gen, device = setup.model, setup.opt, setup.images, setup.gen, setup.device
    mon = None
    if config != "bare":
        import spherewatch as sw

        mon = sw.Monitor(sinks=("jsonl",), log_dir=log_dir, **({"preset": "full"} if config == "full" else {}))
    b = args.batch
    target = (torch.arange(2 * b, device=device) + b) % (2 * b)
    eye = torch.eye(2 * b, dtype=torch.bool, device=device)
    amp = device.type == "cuda"
    _sync(device)
    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, images.shape[0], (b,), device=device, generator=gen)
        x = images[idx]
        cl = torch.channels_last
        v1 = (x + 0.1 * torch.randn(x.shape, device=device, generator=gen)).contiguous(memory_format=cl)
        v2 = x.flip(3).contiguous(memory_format=cl)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            z1, z2 = model(v1), model(v2)
            if mon is not None:
                mon.observe(z1, z2)
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
            loss = F.cross_entropy((z @ z.T / 0.2).masked_fill(eye, float("-inf")), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(step)
    if mon is not None:
        mon.close()
    _sync(device)
    return {"config": config, "wall": time.perf_counter() - t0}


def training(args, device) -> None:
    configs = ("bare", "default", "full")
    setup = _Setup(args, device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:  # warm-up round: cuDNN autotuning, lazy imports, first-call costs
            _train(config, argparse.Namespace(**{**vars(args), "steps": min(args.steps, 100)}), setup,
                   os.path.join(tmp, f"warm-{config}"))
        for rep in range(args.reps):
            for config in configs[rep % 3:] + configs[: rep % 3]:
                r = _train(config, args, setup, os.path.join(tmp, f"{config}-{rep}"))
                r["rep"] = rep
                rows.append(r)
    by = {(r["rep"], r["config"]): r["wall"] for r in rows}
    bare = statistics.median(by[(k, "bare")] for k in range(args.reps))
    print(f"\n### Training loop on {_device_name(device)}: ResNet-like CNN (width {args.width}), {args.image}x"
          f"{args.image} images, batch {args.batch}, {args.steps} steps, {args.reps} rounds; bare run {bare:.2f} s "
          f"({bare / args.steps * 1e3:.2f} ms/step)\n")
    print("| configuration | wall ratio (median) | range | monitor ms per evaluation (from the wall times) | target |")
    print("|---|---:|---:|---:|---:|")
    evals = len(range(0, args.steps, 50))
    for config, target in (("default", 1.02), ("full", 1.10)):
        ratios = [by[(k, config)] / by[(k, "bare")] for k in range(args.reps)]
        extra = statistics.median(by[(k, config)] - by[(k, "bare")] for k in range(args.reps))
        print(f"| {config} | {statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} | "
              f"{extra / evals * 1e3:.1f} | <= {target:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check the script)")
    parser.add_argument("--n", type=int, default=65_536)
    parser.add_argument("--d", type=int, default=2_048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (a multiple of 50)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA not available: nothing to measure (run this on a machine with a CUDA GPU, or pass --device cpu "
              "with small sizes to check the script).")
        sys.exit(0)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    print(f"torch {torch.__version__}, device {_device_name(device)}\n")
    if not args.skip_kernels:
        kernels(args, device)
    if not args.skip_training:
        training(args, device)


if __name__ == "__main__":
    main()
