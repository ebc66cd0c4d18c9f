"""Fault row 4: bad embedding batches in a real training loop.

Some batches are handled silently and correctly (NaN / Inf rows raise the ``nonfinite`` alert, zero rows give finite
metrics, low precision and autograd views are converted); the others are reported once (log + ``monitor_fault``
alert), that batch is not recorded, and training goes on; ``strict=True`` raises ``SpherewatchError`` instead.
"""
from __future__ import annotations

import logging
import math

import pytest
import torch
from reliability._harness import TinyTrainer, assert_reported_once, evaluation_steps

import spherewatch as sw
import spherewatch.metrics as M
from spherewatch.compute import _one_point

EVERY = 2
STEPS = range(10)
BAD_STEPS = (4, 6)  # two evaluation steps: a fault is still reported once
U = "spherewatch/uniformity"


def _with_rows(value, rows=(0,)):
    def f(z):
        z = z.detach().clone()
        z[list(rows)] = value
        return z
    return f


SILENT = {
    "NaN rows": _with_rows(float("nan")),
    "Inf rows": _with_rows(float("inf")),
    "all-zero rows": _with_rows(0.0, rows=(0, 1, 2)),
    "a single row": lambda z: z[:1],
    "an empty batch": lambda z: z[:0],
    "bf16": lambda z: z.to(torch.bfloat16),
    "fp16": lambda z: z.to(torch.float16),
    "requires_grad (not detached)": lambda z: z,
    "a non-contiguous view": lambda z: torch.cat([z, z], dim=1)[:, ::2],
}

REPORTED = {  # batch -> (reported part, fragment of the message)
    "integer dtype": (lambda z: (z * 100).long(), "capture:embeddings", "floating dtype, got torch.int64"),
    "1-D tensor": (lambda z: z[0], "capture:embeddings", "2-D tensor (N, D), got shape (8,)"),
    "3-D tensor without pooling": (lambda z: z.reshape(4, 8, 8), "capture:embeddings", "pass `pool='mean'`"),
    "meta device (not the model's)": (lambda z: z.to("meta"), "readback", "meta tensor"),
}


def _inject(transform, seen):
    def embeddings(step, z1, z2):
        if step in BAD_STEPS:
            z1, z2 = transform(z1), transform(z2)
        seen[step] = (z1, z2)
        return z1, z2
    return embeddings


@pytest.mark.parametrize("case", list(SILENT))
def test_odd_but_valid_batches_are_handled_without_a_fault(case, make_monitor, spherewatch_logs):
    fired, seen = [], {}
    mon = make_monitor(sinks=("memory",), every_n_steps=EVERY, on_alert=fired.append)
    trainer = TinyTrainer().run(mon, STEPS, embeddings=_inject(SILENT[case], seen))
    assert trainer.steps_done == list(STEPS)
    assert mon.faults == {} and not [a for a in fired if a.rule == "monitor_fault"]
    assert not [r for r in spherewatch_logs.records if r.levelno >= logging.ERROR]
    memory = mon.sink("memory")
    at = {step: values for step, values in memory.scalars}
    expected_steps = evaluation_steps(STEPS, EVERY)
    if case == "an empty batch":  # nothing to measure at those steps; said once
        assert sorted(at) == [s for s in expected_steps if s not in BAD_STEPS]
        assert sum("no usable embeddings reached the monitor" in r.getMessage() for r in spherewatch_logs.records) == 1
        return
    assert sorted(at) == expected_steps
    bad = at[BAD_STEPS[0]]
    z, z_pos = seen[BAD_STEPS[0]]
    if case in ("NaN rows", "Inf rows"):
        nonfinite = [a for a in fired if a.rule == "nonfinite" and a.step == BAD_STEPS[0]]
        assert nonfinite and {a.severity for a in nonfinite} == {"critical"}
        assert U in {a.key for a in nonfinite}
        assert bad["spherewatch/nonfinite_fraction"] == pytest.approx(1 / z.shape[0])
        assert math.isnan(bad[U])
        assert all(math.isfinite(v) for v in at[8].values())  # the next clean batch is measured normally
        return
    assert all(math.isfinite(v) for v in bad.values()), bad
    assert not [a for a in fired if a.rule == "nonfinite"]
    if case == "a single row":  # pair metrics need two rows: only the per-row statistics are logged
        assert {k.rsplit("/", 1)[1] for k in bad} == {"rows", "nonfinite_fraction", "norm_mean", "norm_std", "norm_min",
                                                     "norm_max"}  # zero_norm_fraction needs two rows, too
        return
    # zero rows are all one point (spherewatch.compute.NORM_FLOOR): they read as collapsed, not as "no direction"
    z, z_pos = (_one_point(v.detach())[0] for v in (z, z_pos))
    assert bad[U] == pytest.approx(M.uniformity(z).item(), rel=1e-5)
    assert bad["spherewatch/alignment"] == pytest.approx(M.alignment(z, z_pos).item(), rel=1e-5, abs=1e-7)
    if case == "all-zero rows":
        assert bad["spherewatch/norm_min"] == 0.0
        assert bad["spherewatch/zero_norm_fraction"] == pytest.approx(3 / z.shape[0])


@pytest.mark.parametrize("case", list(REPORTED))
def test_unusable_batches_are_reported_once_and_skipped(case, make_monitor, spherewatch_logs):
    transform, part, fragment = REPORTED[case]
    fired = []
    mon = make_monitor(sinks=("memory",), every_n_steps=EVERY, on_alert=fired.append)
    trainer = TinyTrainer().run(mon, STEPS, embeddings=_inject(transform, {}))
    assert trainer.steps_done == list(STEPS)
    record, alert = assert_reported_once(spherewatch_logs.records, fired, part)
    assert fragment in record.getMessage() and fragment in alert.message
    assert mon.faults[part] == len(BAD_STEPS)  # counted every time, reported once
    logged = [step for step, _ in mon.sink("memory").scalars]
    assert logged == [s for s in evaluation_steps(STEPS, EVERY) if s not in BAD_STEPS]  # nothing else lost


@pytest.mark.parametrize("case", list(REPORTED))
def test_unusable_batches_raise_spherewatch_error_under_strict(case, make_monitor):
    transform, part, fragment = REPORTED[case]
    mon = make_monitor(sinks=("memory",), every_n_steps=EVERY, strict=True)
    trainer = TinyTrainer()
    trainer.run(mon, range(BAD_STEPS[0]))
    # on `meta` the eigen-decomposition metrics fail first (they read a finiteness flag back), before the read-back
    parts = f"({part}|metric:embeddings/effective_rank)" if part == "readback" else part
    with pytest.raises(sw.SpherewatchError, match=f"spherewatch {parts} failed") as info:
        trainer.run(mon, [BAD_STEPS[0]], embeddings=_inject(transform, {}))
    assert fragment in str(info.value)
