"""The GPU path never stalls training: off-sample steps and captures cause no host synchronisation, and an evaluation
synchronises only for its eigen-decompositions and the single readback of its values.

``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising CUDA call PyTorch makes (``.item()``, ``.cpu()``,
blocking copies, ``nonzero``, the info check of the cuSOLVER eigen-solver) into a ``RuntimeError``; ``"warn"`` turns
it into a warning, which these tests count. The monitors run with ``strict=True`` so that such an error raises
instead of being reported as a fault. Only the monitor's calls (and, for hooks, the forward pass of a plain linear
layer) run under the debug mode: the training code around them is not what is tested.
"""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn as nn

import spherewatch as sw
import spherewatch.metrics as M
from spherewatch.keys import metric_key

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (torch.cuda.is_available() is False): host-synchronisation checks run on a GPU only",
)

DEVICE = "cuda"
SYNC_MESSAGE = "called a synchronizing CUDA operation"


def key(metric, tap="embeddings"):
    return metric_key(metric, tap)


def make_monitor(**kw):
    kw.setdefault("sinks", ("memory",))
    kw.setdefault("warn", False)
    kw.setdefault("strict", True)
    return sw.Monitor(**kw)


def decompositions(names) -> int:
    """Eigen-decompositions one spectral evaluation runs: each synchronises once (cuSOLVER's info check)."""
    names = set(names)
    return (
        ("effective_rank" in names)
        + ("effective_rank_centered" in names)
        + bool(names & {"spectrum", "collapsed_dimensions", "alpha_req"})
    )


@contextlib.contextmanager
def sync_mode(mode: str):
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


@contextlib.contextmanager
def count_syncs():
    """Collect one entry per synchronising CUDA call made inside the block (read it after the block)."""
    found: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sync_mode("warn"):
            yield found
    found.extend(w for w in caught if SYNC_MESSAGE in str(w.message))


def views(gen, n=256, d=64, dtype=torch.float32):
    z1 = torch.randn(n, d, device=DEVICE, generator=gen)
    z2 = z1 + 0.3 * torch.randn(n, d, device=DEVICE, generator=gen)
    return z1.to(dtype), z2.to(dtype)


@pytest.mark.parametrize("preset", ["standard", "full"])
def test_off_sample_steps_and_captures_cause_no_host_sync(preset):
    mon = make_monitor(every_n_steps=5, preset=preset)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    off = sampling_steps = 0
    for step in range(16):
        z1, z2 = views(gen)
        sampling = mon.armed
        with sync_mode("error"):
            mon.observe(z1, z2)  # a capture is a device-to-device copy, even on a sampling step
            if not sampling:
                mon.step(step)
        if sampling:
            mon.step(step)  # the evaluation: its syncs are counted in the next test
            sampling_steps += 1
        else:
            off += 1
    assert (off, sampling_steps) == (12, 4)
    assert mon.faults == {}
    assert [s for s, _ in mon.sink("memory").history(key("uniformity"))] == [0, 5, 10, 15]
    mon.close()


@pytest.mark.parametrize("preset", ["standard", "full"])
def test_evaluations_sync_only_for_decompositions_and_one_readback(preset):
    mon = make_monitor(every_n_steps=5, spectral_every_n_steps=10, preset=preset)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    counts = {}
    last = None
    for step in range(21):
        z1, z2 = views(gen)
        sampling = mon.armed
        mon.observe(z1, z2)
        if sampling:
            with count_syncs() as syncs:
                mon.step(step)
            counts[step] = len(syncs)
            last = (z1, z2)
        else:
            mon.step(step)
    assert sorted(counts) == [0, 5, 10, 15, 20]
    assert mon.faults == {}
    # evaluation without spectral metrics: the one device-to-host copy of every value
    assert counts[5] == counts[15] == 1
    # with them: one info check per eigen-decomposition, plus that copy
    bound = decompositions(mon.config.metric_names) + 1
    for step in (0, 10, 20):
        assert 1 <= counts[step] <= bound, (step, counts)
    # and the values computed on the GPU are those of the CPU functions on the same rows
    z1, z2 = (t.cpu() for t in last)
    got = mon.last_values
    assert got[key("uniformity")] == pytest.approx(M.uniformity(z1).item(), rel=1e-4)
    assert got[key("alignment")] == pytest.approx(M.alignment(z1, z2).item(), rel=1e-4)
    assert got[key("effective_rank")] == pytest.approx(M.effective_rank(z1).item(), rel=1e-3)
    mon.close()


def test_watched_module_is_captured_without_host_sync():
    enc = nn.Linear(32, 64).to(DEVICE)
    x = torch.randn(128, 32, device=DEVICE)
    with torch.no_grad():
        enc(x)  # warm-up (cuBLAS handle and workspace) before the hook exists and outside the checked region
    mon = make_monitor(every_n_steps=4)
    mon.watch(enc, tap="encoder")
    for step in range(9):
        sampling = mon.armed
        with sync_mode("error"):
            with torch.no_grad():
                enc(x)  # the hook fires on every forward; it copies rows only when armed
            if not sampling:
                mon.step(step)
        if sampling:
            mon.step(step)
    assert mon.captures["encoder"] == 3  # steps 0, 4, 8
    assert mon.faults == {}
    assert [s for s, _ in mon.sink("memory").history(key("uniformity", "encoder"))] == [0, 4, 8]
    mon.close()


def test_reservoir_window_of_bf16_batches_causes_no_host_sync():
    # 4 capture steps x 128 rows > max_samples: the reservoir replaces rows with index copies (host-built indices
    # travel with non-blocking copies)
    mon = make_monitor(every_n_steps=10, window_steps=4, max_samples=300)
    gen = torch.Generator(device=DEVICE).manual_seed(2)
    for step in range(21):
        z, _ = views(gen, n=128, dtype=torch.bfloat16)
        evaluation = step % 10 == 0
        with sync_mode("error"):
            mon.observe(z)
            if not evaluation:
                mon.step(step)
        if evaluation:
            mon.step(step)
    assert mon.captures["embeddings"] == 9  # step 0, then steps 7-10 and 17-20
    assert mon.faults == {}
    assert [s for s, _ in mon.sink("memory").history(key("uniformity"))] == [0, 10, 20]
    mon.close()
