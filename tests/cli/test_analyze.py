"""`spherewatch analyze`: every format, values equal the library's functions, streaming, and every error path."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import spherewatch.metrics as M
from spherewatch.analyze import analyze

CLI = [sys.executable, "-m", "spherewatch"]


def run_cli(*args, cwd=None):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("emb")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(600, 24, generator=g) * torch.linspace(0.2, 2, 24) + 0.3
    zp = z + 0.3 * torch.randn(600, 24, generator=g)
    labels = torch.randint(0, 4, (600,), generator=g)
    torch.save(z, d / "z.pt")
    torch.save({"embeddings": z, "other": zp}, d / "zd.pt")
    torch.save(zp, d / "zp.pt")
    torch.save(labels, d / "labels.pt")
    np.save(d / "z.npy", z.numpy())
    np.savez(d / "z.npz", z=z.numpy())
    from safetensors.torch import save_file

    save_file({"z": z.contiguous()}, str(d / "z.safetensors"))
    return d, z, zp, labels


@pytest.mark.parametrize("name", ["z.pt", "zd.pt", "z.npy", "z.npz", "z.safetensors"])
def test_every_format_gives_the_library_values(data, name):
    d, z, _, _ = data
    out = analyze(str(d / name))
    m = out["metrics"]
    assert out["mode"] == "exact" and (out["rows"], out["dim"]) == (600, 24)
    assert m["uniformity"] == pytest.approx(M.uniformity(z).item(), rel=1e-6)
    assert m["effective_rank"] == pytest.approx(M.effective_rank(z).item(), rel=1e-6)
    assert m["normalized_std"] == pytest.approx(M.normalized_std(z).item(), rel=1e-6)
    assert m["mean_cosine"] == pytest.approx(M.mean_cosine(z).item(), rel=1e-5)


def test_cli_json_with_pairs_and_labels_equals_the_library(data):
    d, z, zp, labels = data
    res = run_cli("analyze", str(d / "z.pt"), "--pos", str(d / "zp.pt"), "--labels", str(d / "labels.pt"), "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)["metrics"]
    assert m["alignment"] == pytest.approx(M.alignment(z, zp).item(), rel=1e-6)
    assert m["uniformity_pos"] == pytest.approx(M.uniformity(zp).item(), rel=1e-6)
    assert m["redundancy"] == pytest.approx(M.redundancy(z, zp).item(), rel=1e-5)
    assert m["nc1"] == pytest.approx(M.nc1(z, labels).item(), rel=1e-5)
    table = run_cli("analyze", str(d / "z.npy"))
    assert table.returncode == 0 and "effective_rank" in table.stdout and "N=600, D=24" in table.stdout


def test_streaming_matches_exact_statistics(tmp_path):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5000, 16, generator=g) * torch.linspace(0.3, 1.5, 16) + 0.2
    zp = z + 0.2 * torch.randn(5000, 16, generator=g)
    np.save(tmp_path / "z.npy", z.numpy())
    np.save(tmp_path / "zp.npy", zp.numpy())
    exact = analyze(str(tmp_path / "z.npy"), pos=str(tmp_path / "zp.npy"))["metrics"]
    streamed = analyze(str(tmp_path / "z.npy"), pos=str(tmp_path / "zp.npy"), chunk_rows=700, in_memory_rows=1000)
    assert streamed["mode"] == "streamed"
    s = streamed["metrics"]
    for k in ("effective_rank", "effective_rank_centered", "normalized_std", "mean_cosine", "alignment",
              "redundancy", "collapsed_dimensions", "nonfinite_fraction", "norm_mean", "norm_std", "norm_min",
              "norm_max"):
        assert s[k] == pytest.approx(exact[k], rel=1e-4, abs=1e-6), k
    # uniformity from within-chunk pairs: an estimate, within a few of its reported standard errors
    assert s["uniformity_stderr"] > 0
    assert abs(s["uniformity"] - exact["uniformity"]) < 5 * s["uniformity_stderr"]


def test_missing_file_wrong_shape_unsupported_and_bad_dtype(tmp_path):
    res = run_cli("analyze", str(tmp_path / "nope.pt"))
    assert res.returncode == 2 and "No such embeddings file" in res.stderr and "nope.pt" in res.stderr
    np.save(tmp_path / "x3.npy", np.zeros((4, 3, 2), dtype=np.float32))
    res = run_cli("analyze", str(tmp_path / "x3.npy"))
    assert res.returncode == 2 and "2-D embedding matrix" in res.stderr and "(4, 3, 2)" in res.stderr
    (tmp_path / "x.csv").write_text("1,2\n")
    res = run_cli("analyze", str(tmp_path / "x.csv"))
    assert res.returncode == 2 and ".safetensors" in res.stderr
    np.save(tmp_path / "int.npy", np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="floating"):
        analyze(str(tmp_path / "int.npy"))
    torch.save({"a": torch.zeros(3, 2), "b": torch.zeros(3, 2)}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="--key"):
        analyze(str(tmp_path / "two.pt"))
    with pytest.raises(ValueError, match="shape"):
        analyze(str(tmp_path / "two.pt"), key="a", pos=str(tmp_path / "x3.npy"))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/spherewatch_pwned",))


def test_a_pickle_that_carries_code_is_refused(tmp_path):
    torch.save({"z": torch.zeros(4, 2), "evil": Evil()}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.npy", "wb") as f:
        np.save(f, np.array([Evil()], dtype=object), allow_pickle=True)
    for name in ("evil.pt", "evil.npy"):
        res = run_cli("analyze", str(tmp_path / name))
        assert res.returncode == 2, res.stdout
        assert "Refusing to load" in res.stderr and "pickled" in res.stderr
    assert not os.path.exists("/tmp/spherewatch_pwned")
    with open(tmp_path / "plain.pkl.pt", "wb") as f:
        pickle.dump(Evil(), f)
    assert run_cli("analyze", str(tmp_path / "plain.pkl.pt")).returncode == 2
    assert not os.path.exists("/tmp/spherewatch_pwned")
