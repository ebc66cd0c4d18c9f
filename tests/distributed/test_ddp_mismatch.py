"""Issue 22 row 3: ranks that disagree about the Monitor get a clear error, never a hang until the collective
timeout. Two real gloo processes on 127.0.0.1 per case (see _mismatch_worker.py): a Monitor on rank 0 only,
another schedule on one rank, one rank's step counter off by one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gloo_ranks import run_ranks

WORKER = Path(__file__).with_name("_mismatch_worker.py")

pytestmark = pytest.mark.timeout(240)


def run_job(scenario, out):
    run_ranks(WORKER, lambda r, port: [scenario, str(r), "2", port, str(out)], out, timeout=180, label=scenario)
    return [json.loads((out / f"{scenario}-rank{r}.json").read_text()) for r in range(2)]


def fault_text(result):
    return " ".join(line for line in result["lines"] if "distributed failed" in line)


def test_a_monitor_on_rank_zero_only_is_named_not_waited_for(tmp_path):
    r0, r1 = run_job("rank0_only", tmp_path)
    assert r0["reached"] == r1["reached"] == 39  # training went on to the end on both ranks
    assert r0["faults"] == {"distributed": 1} and r0["evaluations"] == 0
    text = fault_text(r0)
    assert "rank(s) [1] did not reach the first evaluation" in text and "create the Monitor on every rank" in text


def test_another_schedule_on_one_rank_is_an_error_on_every_rank(tmp_path):
    results = run_job("schedule", tmp_path)
    for res in results:
        assert res["reached"] == 39 and res["faults"] == {"distributed": 1} and res["evaluations"] == 0
        assert "rank 1 has every_n_steps=10 where rank 0 has every_n_steps=5" in fault_text(res)


def test_a_step_counter_off_by_one_is_an_error_not_a_hang(tmp_path):
    results = run_job("off_by_one", tmp_path)
    for res in results:
        assert res["reached"] == 39 and res["faults"] == {"distributed": 1} and res["evaluations"] == 0
        assert "rank 1 has step=1 where rank 0 has step=0" in fault_text(res)
