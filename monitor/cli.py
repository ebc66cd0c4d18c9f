"""The ``spherewatch`` command line."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable, Dict, List, Optional, Sequence

import torch

import spherewatch.metrics as M
from spherewatch._version import __version__
from spherewatch.analyze import MAX_NPZ_MEMBER_BYTES, analyze
from spherewatch.catalogue import spec
from spherewatch.demo import run_demo
from spherewatch.report import build_report

__all__ = ["main"]


def _generated_embeddings(n: int, d: int, seed: int) -> Dict[str, tuple]:
    g = torch.Generator().manual_seed(seed)
    iso = torch.randn(n, d, generator=g)
    basis = torch.linalg.qr(torch.randn(d, 4, generator=g))[0]
    sub = torch.randn(n, 4, generator=g) @ basis.T
    point = torch.randn(1, d, generator=g)
    return {
        "healthy (isotropic)": (iso, iso + 0.3 * torch.randn(n, d, generator=g)),
        "ReLU features": (torch.relu(iso), torch.relu(iso + 0.3 * torch.randn(n, d, generator=g))),
        "dimensional collapse (4-dim)": (sub, sub + 0.05 * torch.randn(n, d, generator=g) @ basis @ basis.T),
        "complete collapse": (point + 1e-3 * torch.randn(n, d, generator=g), point.expand(n, d).clone()),
    }


def _metric_table(n: int, d: int, seed: int) -> List[List[str]]:
    rows = [["embeddings", "alignment", "uniformity", "effective_rank", "normalized_std", "mean_cosine", "collapsed_dims",
             "redundancy"]]
    for name, (z, z_pos) in _generated_embeddings(n, d, seed).items():
        vals = [
            M.alignment(z, z_pos),
            M.uniformity(z),
            M.effective_rank(z),
            M.normalized_std(z),
            M.mean_cosine(z),
            M.collapsed_dimensions(z),
            M.redundancy(z, z_pos) if d >= 2 else float("nan"),
        ]
        rows.append([name] + [f"{float(v):.4g}" for v in vals])
    return rows


def _print_table(rows: Sequence[Sequence[str]], out=None) -> None:
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip(),
              file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _cmd_demo(args: argparse.Namespace) -> int:
    results = run_demo(
        steps=args.steps, every_n_steps=args.every, log_dir=args.log_dir, tracking_uri=args.tracking_uri,
        report_dir=None if args.no_report else args.report_dir, seed=args.seed, progress=not args.no_progress,
    )
    healthy, collapsing = results["simsiam-healthy"], results["simsiam-no-stopgrad"]
    if healthy["alerts"] or not collapsing["alerts"]:
        print("\nUnexpected: the collapse alert should fire on the collapsing run only.", file=sys.stderr)
        return 1
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    print(f"spherewatch {__version__}: metrics of generated embeddings (N={args.samples}, D={args.dim})\n")
    _print_table(_metric_table(args.samples, args.dim, args.seed))
    print(
        f"\nHealthy: uniformity near -4 (t=2), effective rank near D={args.dim}, normalized std near "
        f"1/sqrt(D)={args.dim ** -0.5:.3f}, mean cosine near 0. Collapse: uniformity -> 0, rank -> 1."
    )
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    try:
        result = analyze(args.file, pos=args.pos, labels=args.labels, key=args.key, chunk_rows=args.chunk_rows,
                         t=args.t, progress=not args.json and sys.stderr.isatty(), max_npz_bytes=args.max_npz_bytes)
    except (FileNotFoundError, ValueError, TypeError, ModuleNotFoundError) as err:
        print(f"spherewatch analyze: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=True))
        return 0
    print(f"{result['file']}: N={result['rows']}, D={result['dim']} ({result['mode']})\n")
    refs = _references(result["rows"], result["dim"])
    rows = [["metric", "value", "healthy", "collapsed", "verdict"]]
    for k, v in result["metrics"].items():
        ref = refs.get(k)
        rows.append([k, f"{v:.6g}"] + ([f"{ref[0]:.4g}", f"{ref[1]:.4g}", _reading(v, *ref)] if ref else ["", "", ""]))
    _print_table(rows)
    n_ref = min(result["rows"], REFERENCE_ROWS)
    print(f"\nhealthy: isotropic Gaussian rows, collapsed: every row one point (N={n_ref}, D={result['dim']}; "
          "`spherewatch metrics` shows more).\nA trained encoder is rarely isotropic: read the verdict beside the run's "
          "own history\n(an effective rank well below D is common in healthy training).")
    return 0


#: rows of the generated reference embeddings `analyze` compares a file with (at most)
REFERENCE_ROWS = 4096
#: metrics with a healthy and a collapsed reference, as `spherewatch metrics` prints them
REFERENCE_METRICS = ("alignment", "uniformity", "effective_rank", "normalized_std", "mean_cosine", "redundancy")


def _references(n: int, d: int, seed: int = 0) -> Dict[str, tuple]:
    """``metric -> (healthy, collapsed)`` of generated embeddings with the file's dimension (what ``spherewatch
    metrics`` tabulates): isotropic Gaussian rows, and every row the same point."""
    if n < 2 or d < 1:
        return {}
    gen = _generated_embeddings(min(n, REFERENCE_ROWS), d, seed)
    table = {}
    for label, name in (("healthy", "healthy (isotropic)"), ("collapsed", "complete collapse")):
        z, z_pos = gen[name]
        table[label] = {m: float(getattr(M, m)(z, z_pos) if "pair" in spec(m).needs else getattr(M, m)(z))
                        for m in REFERENCE_METRICS if d >= 2 or m != "redundancy"}
    return {m: (table["healthy"][m], table["collapsed"][m]) for m in table["healthy"]}


def _reading(value: float, healthy: float, collapsed: float) -> str:
    """Where ``value`` lies between the healthy and the collapsed reference."""
    if not math.isfinite(value):
        return "not finite"
    span = collapsed - healthy
    if abs(span) < 1e-9:
        return ""
    frac = (value - healthy) / span
    if frac >= 0.9:
        return "collapsed"
    if frac >= 0.6:
        return "toward collapse"
    return "healthy range"


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        result = build_report(list(args.run), args.out, tracking_uri=args.tracking_uri)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as err:
        print(f"spherewatch report: error: {err}", file=sys.stderr)
        return 2
    for name, text in result["verdicts"].items():
        print(f"{name}: {text}")
    print(f"report: {result['html']}")
    for fig in result["figures"]:
        print(f"figure: {fig}")
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _cmd_demo, "metrics": _cmd_metrics, "analyze": _cmd_analyze, "report": _cmd_report,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spherewatch",
        description="Watch the geometry of embeddings while a model trains, and alert when they collapse.",
    )
    parser.add_argument("--version", action="version", version=f"spherewatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train a healthy and a collapsing encoder, monitored (under a minute); "
                          "replaces the previous demo's runs")
    demo.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default 300)")
    demo.add_argument("--every", type=int, default=10, help="evaluate every N steps (default 10)")
    demo.add_argument("--log-dir", default="runs", help="TensorBoard/JSONL root (default ./runs)")
    demo.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow store (default sqlite:///mlflow.db)")
    demo.add_argument("--report-dir", default="spherewatch_report", help="where the HTML reports go")
    demo.add_argument("--no-report", action="store_true", help="skip the HTML reports")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--seed", type=int, default=0)
    met = sub.add_parser("metrics", help="metrics of generated healthy and collapsed embeddings, as a table")
    met.add_argument("--samples", type=int, default=4096, help="rows per embedding batch (default 4096)")
    met.add_argument("--dim", type=int, default=128, help="embedding dimension (default 128)")
    met.add_argument("--seed", type=int, default=0)
    ana = sub.add_parser("analyze", help="metrics of saved embeddings (.pt, .npy, .npz, .safetensors)")
    ana.add_argument("file", help="(N, D) embeddings")
    ana.add_argument("--pos", help="the paired view, same shape (adds alignment)")
    ana.add_argument("--labels", help="(N,) integer labels (adds nc1)")
    ana.add_argument("--key", help="array name inside a .pt dict / .npz / .safetensors file")
    ana.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ana.add_argument("--chunk-rows", type=int, default=65536, help="rows per chunk when streaming large files")
    ana.add_argument("--t", type=float, default=2.0, help="uniformity kernel scale (default 2)")
    ana.add_argument("--max-npz-bytes", type=int, default=MAX_NPZ_MEMBER_BYTES,
                     help=f"largest .npz member read, uncompressed bytes (default {MAX_NPZ_MEMBER_BYTES})")
    rep = sub.add_parser("report", help="HTML page and PNG figures of one run or several compared (JSONL file, "
                         "TensorBoard dir or MLflow run id)")
    rep.add_argument("run", nargs="+", help="spherewatch JSONL files, TensorBoard log dirs or MLflow run ids; several "
                     "are drawn on shared axes")
    rep.add_argument("--out", default="spherewatch_report", help="output folder (default ./spherewatch_report)")
    rep.add_argument("--tracking-uri", default=None, help="MLflow store for a run id (default sqlite:///mlflow.db)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return COMMANDS[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
