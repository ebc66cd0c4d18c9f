"""The ``spherewatch`` command line."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional, Sequence

from spherewatch._version import __version__

__all__ = ["main"]


def _generated_embeddings(n: int, d: int, seed: int) -> Dict[str, tuple]:
    import torch

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
    import spherewatch.metrics as M

    rows = [["embeddings", "alignment", "uniformity", "effective_rank", "normalized_std", "mean_cosine", "collapsed_dims"]]
    for name, (z, z_pos) in _generated_embeddings(n, d, seed).items():
        vals = [
            M.alignment(z, z_pos),
            M.uniformity(z),
            M.effective_rank(z),
            M.normalized_std(z),
            M.mean_cosine(z),
            M.collapsed_dimensions(z),
        ]
        rows.append([name] + [f"{float(v):.4g}" for v in vals])
    return rows


def _print_table(rows: Sequence[Sequence[str]], out=None) -> None:
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _cmd_demo(args: argparse.Namespace) -> int:
    print(f"spherewatch {__version__}: metrics of generated embeddings (N={args.samples}, D={args.dim})\n")
    _print_table(_metric_table(args.samples, args.dim, args.seed))
    print(
        f"\nHealthy: uniformity near -4 (t=2), effective rank near D={args.dim}, normalized std near "
        f"1/sqrt(D)={args.dim ** -0.5:.3f}, mean cosine near 0. Collapse: uniformity -> 0, rank -> 1."
    )
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {"demo": _cmd_demo}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spherewatch",
        description="Watch the geometry of embeddings while a model trains, and alert when they collapse.",
    )
    parser.add_argument("--version", action="version", version=f"spherewatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the demo on generated data and print what it found")
    demo.add_argument("--samples", type=int, default=4096, help="rows per embedding batch (default 4096)")
    demo.add_argument("--dim", type=int, default=128, help="embedding dimension (default 128)")
    demo.add_argument("--seed", type=int, default=0)
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
