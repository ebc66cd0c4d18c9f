"""Issue 22 row 4: a capture whose copy into the buffer fails must never reach the metrics. Rows count only once
copied; sparse tensors are densified; a DTensor gives its local rows, or is refused when no rank holds whole rows."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import spherewatch.metrics as M
from spherewatch.buffer import RowReservoir

U = "spherewatch/uniformity"


def test_a_failed_copy_is_not_counted_while_the_window_fills():
    buf = RowReservoir(16)
    good = torch.randn(6, 4)
    buf.add(good)
    with pytest.raises(RuntimeError):
        buf.add(torch.randn(5, 4).to_sparse())  # copy_ from a sparse tensor into the dense buffer fails
    assert (len(buf), buf.seen) == (6, 6)
    torch.testing.assert_close(buf.rows()[0], good)  # no uninitialised slot behind the failed batch


def test_a_failed_copy_over_kept_rows_never_leaves_a_mix():
    buf = RowReservoir(4, seed=1)
    kept = torch.arange(16.0).reshape(4, 4)
    buf.add(kept)
    for _ in range(20):  # replacement phase: a failing batch may aim at slots that hold kept rows
        with pytest.raises(RuntimeError):
            buf.add(torch.full((3, 4), 99.0).to_sparse())
    z = buf.rows()[0]
    assert z is None or all(any(torch.equal(r, k) for k in kept) for r in z)


def test_sparse_embeddings_read_as_their_dense_values(make_monitor):
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    z[:, 8:] = 0  # sparse-looking features
    mons = {kind: make_monitor(sinks=("memory",), every_n_steps=1, preset="standard") for kind in ("dense", "sparse")}
    mons["dense"].observe(z)
    mons["sparse"].observe(z.to_sparse())
    for mon in mons.values():
        mon.step(0)
    assert mons["sparse"].faults == {}
    dense, sparse = (m.sink("memory").history(U) for m in (mons["dense"], mons["sparse"]))
    assert sparse == dense and dense[0][1] == pytest.approx(M.uniformity(z).item(), rel=1e-5)


DTENSOR_SCRIPT = textwrap.dedent("""
    import json, logging, os, sys, tempfile
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    import spherewatch as sw

    store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    out = {}
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("spherewatch").addHandler(handler)
    for name, placement in (("replicate", Replicate()), ("rows", Shard(0)), ("columns", Shard(1))):
        mon = sw.Monitor(sinks=("memory",), every_n_steps=1, preset="cheap", warn=False,
                         log_dir=tempfile.mkdtemp())
        del lines[:]
        mon.observe(distribute_tensor(z, mesh, [placement]))
        mon.step(0)
        hist = mon.sink("memory").history("spherewatch/mean_cosine")
        out[name] = {"values": [v for _, v in hist], "faults": mon.faults,
                     "alerts": [a.rule for a in mon.alerts],
                     "messages": list(lines)}
        mon.close()
    out["expected"] = sw.metrics.mean_cosine(z).item()
    dist.destroy_process_group()
    print(json.dumps(out))
""")


def test_dtensor_rows_are_local_and_column_shards_are_refused(tmp_path):
    pytest.importorskip("torch.distributed.tensor")
    res = subprocess.run([sys.executable, "-c", DTENSOR_SCRIPT], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name in ("replicate", "rows"):
        assert out[name]["faults"] == {} and out[name]["values"] == [pytest.approx(out["expected"], rel=1e-5)]
    cols = out["columns"]
    assert cols["values"] == []  # nothing logged from a batch that never made it into the buffer
    assert list(cols["faults"]) == ["capture:embeddings"]
    assert "nonfinite" not in cols["alerts"]
    assert any("no rank holds whole rows" in m and "redistribute" in m for m in cols["messages"]), cols["messages"]
