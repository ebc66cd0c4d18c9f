"""Training overhead of the Monitor: a CPU SimCLR-style training loop run bare, with the monitor at its defaults and
with the ``full`` preset, interleaved; wall-time ratios, the monitor's own time, peak memory and a profile.

Run: ``.venv/bin/python benchmarks/overhead.py [--quick] [--threads 1 0] [--profile]`` (about 10 minutes on 2 busy
cores; ``--quick``: 1 minute, 1 thread).

The loop: an MLP encoder + projection head (``--in-dim 64 --hidden 256 --dim 128``), two noisy views of a batch of
256 rows, the NT-Xent loss of SimCLR over the 2B views, SGD with momentum. The monitored configurations add the three
lines of the README (``Monitor(...)``, ``observe(z1, z2)``, ``step(step)``), writing JSONL into a temporary folder:

- ``default``: ``Monitor(sinks=("jsonl",), log_dir=tmp)``: every 50 steps, ``standard`` preset, default alert rules;
- ``full``: the same with ``preset="full"`` (every metric, three eigen-decompositions per evaluation).

Timing: for each thread setting (``--threads 1 0``: 1 thread, then torch's default), one child process runs a
warm-up round (so lazy imports and first-call costs are paid once, as in a real run), then ``--reps`` rounds. In a
round the three configurations (three identical models, optimizers and data streams) advance step by step in
rotated order (ABC, BCA, CAB, ...), so drift and load from other processes fall on all three alike; each
configuration's summed step time is divided by the bare run's of the same round, and the table reports the median
and the range over rounds. The monitor's own time (inside ``observe``, ``step`` and ``close``) is also accounted
directly, which is far less noisy than a difference of wall times on a shared machine:
``accounted ratio = 1 + monitor time / bare time``.

Memory: one fresh process per configuration (1 thread): after the model, optimizer and data exist it resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), imports spherewatch (monitored runs only), trains, and reports
``VmHWM - VmRSS(before)``. The same process times the first evaluation (lazy imports, opening the sink).

``--profile`` runs the default configuration under ``cProfile``, enabled only inside the monitor's calls, and prints
its top costs.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _peak import peak_extra_mb, reset_peak, rss_kb  # noqa: E402 - benchmarks/ is on sys.path (script dir)

CONFIGS = ("bare", "default", "full")




class _Setup:
    """Data, model and optimizer of one run, identical for every configuration (same seeds)."""

    def __init__(self, in_dim: int, hidden: int, dim: int, seed: int = 0) -> None:
        import torch
        import torch.nn as nn

        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed + 1)
        protos = torch.randn(16, in_dim, generator=self.gen) * 2.0
        self.data = protos[torch.randint(0, 16, (8192,), generator=self.gen)] + torch.randn(8192, in_dim,
                                                                                               generator=self.gen)

        def block(i, o):
            return [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]

        backbone = nn.Sequential(*block(in_dim, hidden), *block(hidden, hidden), nn.Linear(hidden, hidden))
        projector = nn.Sequential(nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, dim))
        self.model = nn.Sequential(backbone, projector)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def _augment(x, gen):
    import torch

    mask = (torch.rand(x.shape, generator=gen) > 0.2).to(x.dtype)
    scale = 1.0 + 0.2 * torch.randn(x.shape[0], 1, generator=gen)
    return (x * mask * scale + 0.5 * torch.randn(x.shape, generator=gen)) / 0.8


def _nt_xent(z1, z2, tau: float = 0.2):
    """SimCLR's NT-Xent over the 2B views: each view's positive is its pair, the 2B - 2 others are negatives."""
    import torch
    import torch.nn.functional as F

    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T / tau).masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
    target = (torch.arange(2 * b) + b) % (2 * b)
    return F.cross_entropy(sim, target)


def _make_monitor(config: str, log_dir: str):
    if config == "bare":
        return None
    import spherewatch as sw

    extra = {"preset": "full"} if config == "full" else {}
    return sw.Monitor(sinks=("jsonl",), log_dir=log_dir, **extra)


class _Run:
    """One configuration's training run, advanced one optimizer step at a time so configurations can interleave."""

    def __init__(self, config: str, args, log_dir: str, *, profiler=None, defer_monitor: bool = False) -> None:
        self.config, self.args, self.profiler, self.log_dir = config, args, profiler, log_dir
        self.setup = _Setup(args.in_dim, args.hidden, args.dim)
        self.mon = None
        self.wall = self.monitor = 0.0  # seconds in this run's steps / in the monitor's calls
        self.first_eval = 0.0  # the monitor's time at step 0 (an evaluation; lazy imports in a fresh process)
        self.loss = float("nan")
        if not defer_monitor:
            self.attach_monitor()

    def attach_monitor(self) -> None:
        t0 = time.perf_counter()
        self.mon = _make_monitor(self.config, self.log_dir)
        dt = time.perf_counter() - t0
        self.wall += dt
        self.monitor += dt

    def _call(self, fn, *a) -> float:
        if self.profiler is not None:
            self.profiler.enable()
        t0 = time.perf_counter()
        fn(*a)
        dt = time.perf_counter() - t0
        if self.profiler is not None:
            self.profiler.disable()
        return dt

    def step(self, step: int) -> None:
        import torch

        t_start = time.perf_counter()
        st, mon, mon_dt = self.setup, self.mon, 0.0
        idx = torch.randint(0, st.data.shape[0], (self.args.batch,), generator=st.gen)
        x = st.data[idx]
        z1, z2 = st.model(_augment(x, st.gen)), st.model(_augment(x, st.gen))
        if mon is not None:
            mon_dt += self._call(mon.observe, z1, z2)
        loss = _nt_xent(z1, z2)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        st.opt.step()
        if mon is not None:
            mon_dt += self._call(mon.step, step)
        self.wall += time.perf_counter() - t_start
        self.monitor += mon_dt
        if step == 0:
            self.first_eval = mon_dt
        self.loss = float(loss.detach())

    def close(self) -> dict:
        if self.mon is not None:
            dt = self._call(self.mon.close)
            self.wall += dt
            self.monitor += dt
        return {"config": self.config, "wall": self.wall, "monitor": self.monitor, "first_eval": self.first_eval,
                "evaluations": 0 if self.mon is None else self.mon._evaluations, "loss": self.loss}


def _interleaved(args, steps: int, log_dir: str) -> list:
    """One round: the three configurations advance step by step in rotated order (ABC, BCA, CAB, ...)."""
    runs = [_Run(c, args, os.path.join(log_dir, c)) for c in CONFIGS]
    for step in range(steps):
        k = step % len(runs)
        for run in runs[k:] + runs[:k]:
            run.step(step)
    return [run.close() for run in runs]


def _child_time(args) -> list:
    import torch

    if args.child_threads > 0:
        torch.set_num_threads(args.child_threads)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        _interleaved(args, min(args.steps, 100), os.path.join(tmp, "warm"))  # lazy imports, first-call costs
        for rep in range(args.reps):
            for r in _interleaved(args, args.steps, os.path.join(tmp, str(rep))):
                r["rep"] = rep
                out.append(r)
    return out


def _child_mem(args) -> dict:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        import_s = 0.0
        run = _Run(args.child_mem, args, tmp, defer_monitor=True)  # the baseline holds model, optimizer and data
        base = rss_kb("VmRSS")
        can_reset = reset_peak()
        if args.child_mem != "bare":
            t0 = time.perf_counter()
            import spherewatch  # noqa: F401  (its import is part of the monitor's cost)

            import_s = time.perf_counter() - t0
            run.attach_monitor()
        for step in range(args.steps):
            run.step(step)
        r = run.close()
        r["peak_mb"] = peak_extra_mb(base, can_reset)
        r["import_s"] = import_s
    return r


def _spawn(args, extra: list, threads: int) -> str:
    env = dict(os.environ)
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, __file__, "--steps", str(args.steps), "--reps", str(args.reps), "--batch",
           str(args.batch), "--in-dim", str(args.in_dim), "--hidden", str(args.hidden), "--dim", str(args.dim),
           *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"child {extra} failed with exit code {out.returncode}")
    return out.stdout.strip().splitlines()[-1]


def _profile(args) -> None:
    import cProfile
    import pstats

    import torch

    torch.set_num_threads(1)
    pr = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        _interleaved(args, 100, os.path.join(tmp, "warm"))
        run = _Run("default", args, os.path.join(tmp, "prof"), profiler=pr)
        for step in range(args.steps):
            run.step(step)
        r = run.close()
    print(f"cProfile of the default configuration, {args.steps} steps, 1 thread, inside the monitor's calls only: "
          f"{r['monitor'] * 1e3:.0f} ms in the monitor ({r['evaluations']} evaluations) of {r['wall']:.2f} s\n")
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).strip_dirs().sort_stats(key).print_stats(args.top)
        lines = buf.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        print(f"top by {title}:")
        print("\n".join(lines[start:]).rstrip() + "\n")


def _summary(rows: list, threads: int, steps: int, offstep: dict) -> None:
    reps = sorted({r["rep"] for r in rows})
    by = {(r["rep"], r["config"]): r for r in rows}
    bare = [by[(k, "bare")]["wall"] for k in reps]
    label = "1 thread" if threads == 1 else ("torch default threads" if threads <= 0 else f"{threads} threads")
    print(f"\n#### {label}: {len(reps)} rounds of {steps} steps; bare run {statistics.median(bare):.2f} s "
          f"(median; {statistics.median(bare) / steps * 1e3:.1f} ms/step)\n")
    print("| configuration | wall ratio: median (range) | accounted ratio: median | monitor ms per evaluation | "
          "µs per off-sample step | target | met (wall / accounted) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for config, target in (("default", 1.02), ("full", 1.10)):
        wall = [by[(k, config)]["wall"] / by[(k, "bare")]["wall"] for k in reps]
        acct = 1 + statistics.median(by[(k, config)]["monitor"] / by[(k, "bare")]["wall"] for k in reps)
        evals = by[(reps[0], config)]["evaluations"]
        mon = statistics.median(by[(k, config)]["monitor"] for k in reps)
        med = statistics.median(wall)
        print(f"| {config} | {med:.3f} ({min(wall):.3f}-{max(wall):.3f}) | {acct:.4f} | "
              f"{mon / max(evals, 1) * 1e3:.1f} | {offstep[config]:.1f} | <= {target:.2f} | "
              f"{'yes' if med <= target else 'no'} / {'yes' if acct <= target else 'no'} |")


def _offstep_cost(args) -> dict:
    """µs per off-sample step (``observe`` + ``step`` while not armed), timed call by call in this process."""
    import torch

    import spherewatch as sw

    torch.set_num_threads(1)
    z = torch.randn(args.batch, args.dim)
    out = {}
    for config in ("default", "full"):
        with tempfile.TemporaryDirectory() as tmp:
            mon = sw.Monitor(sinks=("jsonl",), log_dir=tmp, **({"preset": "full"} if config == "full" else {}))
            total, n = 0.0, 0
            for s in range(5000):
                off = not mon.armed
                t0 = time.perf_counter()
                mon.observe(z, z)
                mon.step(s)
                if off:
                    total += time.perf_counter() - t0
                    n += 1
            out[config] = total / n * 1e6
            mon.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (a multiple of 50)")
    parser.add_argument("--reps", type=int, default=5, help="rounds of (bare, default, full)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="thread settings; 0 = torch default")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--in-dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="150 steps, 3 rounds, 1 thread")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the monitor's calls and exit")
    parser.add_argument("--top", type=int, default=14, help="rows of the profile")
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-mem", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_threads is not None:
        print(json.dumps(_child_time(args)))
        return
    if args.child_mem is not None:
        print(json.dumps(_child_mem(args)))
        return
    if args.quick:
        args.steps, args.reps, args.threads = 150, 3, [1]
    if args.profile:
        _profile(args)
        return
    import torch

    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; encoder MLP {args.in_dim}-{args.hidden}-{args.hidden}"
          f"-{args.dim}, batch {args.batch}, NT-Xent; monitor: JSONL sink, every 50 steps")
    offstep = _offstep_cost(args)
    for threads in args.threads:
        rows = json.loads(_spawn(args, ["--child-threads", str(threads)], threads))
        _summary(rows, threads, args.steps, offstep)
    print(f"\n#### Peak memory (fresh process per configuration, 1 thread, {args.steps} steps)\n")
    print("| configuration | peak extra RSS MB | difference vs bare MB | import spherewatch s | first evaluation ms |")
    print("|---|---:|---:|---:|---:|")
    mem = {c: json.loads(_spawn(args, ["--child-mem", c], 1)) for c in CONFIGS}
    for c in CONFIGS:
        m = mem[c]
        first = f"{m['first_eval'] * 1e3:.0f}" if c != "bare" else ""
        imp = f"{m['import_s']:.2f}" if c != "bare" else ""
        print(f"| {c} | {m['peak_mb']:.1f} | {m['peak_mb'] - mem['bare']['peak_mb']:+.1f} | {imp} | {first} |")
    print("\nwall ratio: the configuration's summed step times over the bare run's, in the same round (steps "
          "interleaved); accounted ratio: 1 + time inside observe/step/close over the bare run's time; monitor ms per "
          "evaluation: all of that time divided by the evaluations (off-sample steps and close included).")
    print(f"\nTotal {time.perf_counter() - t0:.0f} s. Targets: default <= 1.02, full <= 1.10.")


if __name__ == "__main__":
    main()
