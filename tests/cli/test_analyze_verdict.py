"""`spherewatch analyze` reads its numbers for the user: a healthy and a collapsed reference beside each overview metric
(generated embeddings of the file's dimension, as `spherewatch metrics` tabulates them) and a verdict."""
import subprocess
import sys

import torch

CLI = [sys.executable, "-m", "spherewatch", "analyze"]


def _table(path):
    done = subprocess.run(CLI + [str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= 120 for line in done.stdout.splitlines())
    rows = {}
    for line in done.stdout.splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[0] in ("uniformity", "effective_rank", "mean_cosine", "normalized_std"):
            rows[cells[0]] = (float(cells[2]), float(cells[3]), " ".join(cells[4:]))
    assert "healthy" in done.stdout.splitlines()[2] and "collapsed" in done.stdout.splitlines()[2]
    return rows


def test_analyze_gives_references_and_a_verdict_per_metric(tmp_path):
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(500, 16, generator=g), tmp_path / "healthy.pt")
    point = torch.randn(1, 16, generator=g)
    torch.save(point + 1e-3 * torch.randn(500, 16, generator=g), tmp_path / "collapsed.pt")
    healthy, collapsed = _table(tmp_path / "healthy.pt"), _table(tmp_path / "collapsed.pt")
    assert set(healthy) == set(collapsed) == {"uniformity", "effective_rank", "mean_cosine", "normalized_std"}
    assert all(verdict == "healthy range" for *_, verdict in healthy.values()), healthy
    assert all(verdict == "collapsed" for *_, verdict in collapsed.values()), collapsed
    ref_healthy, ref_collapsed, _ = healthy["effective_rank"]
    assert 14 < ref_healthy <= 16 and 1 <= ref_collapsed < 1.1  # RankMe of isotropic rows ≈ D, of one point ≈ 1
    assert abs(healthy["mean_cosine"][1] - 1) < 1e-3 and abs(healthy["uniformity"][1]) < 1e-3


def test_with_pairs_the_cross_view_redundancy_gets_references_and_a_verdict(tmp_path):
    # healthy: independent features (the 1/(N-1) floor); collapsed: every feature of both views a copy of one
    g = torch.Generator().manual_seed(1)
    z = torch.randn(500, 16, generator=g)
    torch.save(z, tmp_path / "z.pt")
    torch.save(z + 0.3 * torch.randn(500, 16, generator=g), tmp_path / "zp.pt")
    f = torch.randn(500, 1, generator=g)
    torch.save(f * torch.linspace(1, 2, 16), tmp_path / "c.pt")
    torch.save((f + 0.01 * torch.randn(500, 1, generator=g)) * torch.linspace(1, 2, 16), tmp_path / "cp.pt")

    def row(a, b):
        done = subprocess.run(CLI + [str(tmp_path / a), "--pos", str(tmp_path / b)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        (cells,) = [line.split() for line in done.stdout.splitlines() if line.startswith("redundancy ")]
        return float(cells[1]), float(cells[2]), float(cells[3]), " ".join(cells[4:])

    value, ref_healthy, ref_collapsed, verdict = row("z.pt", "zp.pt")
    assert verdict == "healthy range" and abs(ref_healthy - 1 / 499) < 1e-3 and ref_collapsed == 1.0
    assert row("c.pt", "cp.pt")[3] == "collapsed"
