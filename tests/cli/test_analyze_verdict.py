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
