"""The Monitor under torch.distributed: two real gloo processes on 127.0.0.1 (see _ddp_worker.py).

The two ranks are started once per module (each start pays the torch import); every test below reads the results
of one scenario of that battery. A hang fails instead of blocking: the process group has a 45 s timeout, the
battery a hard deadline, and every test a pytest timeout.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow_server import free_port

from spherewatch import distributed as sw_dist

WORKER = Path(__file__).with_name("_ddp_worker.py")
WORLD = 2
DEADLINE_S = 100.0
REL = 1e-5
METRICS = ("uniformity", "effective_rank", "alignment", "mean_cosine", "redundancy")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    """Run every scenario on two gloo ranks; return ``(results per rank, output dir)``."""
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env.pop("RANK", None)
    port = free_port()
    procs = []
    logs = []
    try:
        for rank in range(WORLD):
            log = open(out / f"rank{rank}.log", "w+b")  # closed below
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, str(WORKER), str(rank), str(WORLD), str(port), str(out)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(out),
            ))
        deadline = time.monotonic() + DEADLINE_S
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        output = []
        for rank, log in enumerate(logs):
            log.seek(0)
            output.append(f"--- rank {rank} ---\n" + log.read().decode(errors="replace")[-4000:])
            log.close()
    codes = [p.returncode for p in procs]
    assert codes == [0] * WORLD, f"ranks exited with {codes} (negative: killed at the deadline)\n" + "\n".join(output)
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return results, out


def scenario(battery, name):
    """The results of one scenario on every rank, failing with the worker's traceback if it raised."""
    results, _ = battery
    per_rank = [r.get(name) for r in results]
    for rank, res in enumerate(per_rank):
        assert res is not None, f"scenario {name} did not run on rank {rank}"
        assert "error" not in res, f"scenario {name} raised on rank {rank}:\n{res['error']}"
    return per_rank


def close(a, b, rel=REL):
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)


# ------------------------------------------------------------------------------------------ global metrics
def test_global_metrics_equal_single_process_metrics_with_uneven_batches(battery):
    for rank, res in enumerate(scenario(battery, "uneven_batches")):
        assert res["gathered_equal"], f"rank {rank}: gathered rows are not the concatenation in rank order"
        for name in METRICS:
            assert close(res["direct"][name], res["ref"][name]), (rank, name, res["direct"][name], res["ref"][name])
            assert close(res["monitor"][name], res["ref"][name]), (rank, name, res["monitor"][name], res["ref"][name])


def test_a_change_marked_on_one_rank_applies_on_every_rank_alike(battery):
    ranks = scenario(battery, "change_marked_on_one_rank")
    assert ranks[0]["alerts"] == ranks[1]["alerts"] and ranks[0]["evaluations"] == ranks[1]["evaluations"] == 11
    assert [tuple(a) for a in ranks[0]["alerts"]][:2] == [("marked_change", 70, "info"),
                                                          ("mean_cosine_collapse", 80, "warning")], ranks[0]


def test_an_evaluation_a_rule_asks_for_runs_on_every_rank(battery):
    ranks = scenario(battery, "confirmation_evaluation")
    assert ranks[0]["steps"] == [1, 50, 60]  # 60: the zone entered at 50 confirmed
    for rank, res in enumerate(ranks):
        assert [tuple(a) for a in res["alerts"]] == [("mean_cosine_collapse", 60)], (rank, res)
        assert res["evaluations"] == 3, (rank, res)  # 1, 50 and 60 on both ranks


def test_every_view_of_observe_views_is_gathered_and_measured(battery):
    for rank, res in enumerate(scenario(battery, "many_views")):
        assert res["gathered_equal"], f"rank {rank}: the (N, V - 1, D) views were not gathered in rank order"
        for name in ("lidar", "alignment"):
            assert close(res["monitor"][name], res["ref"][name]), (rank, name, res["monitor"], res["ref"])


def test_rank_with_zero_rows_gets_the_other_ranks_rows(battery):
    for rank, res in enumerate(scenario(battery, "zero_rows_on_one_rank")):
        assert res["gathered_equal"], f"rank {rank}"
        assert res["nobody_has_rows"]
        for name in METRICS:
            assert close(res["monitor"][name], res["ref"][name]), (rank, name)
            assert close(res["monitor_second"][name], res["ref"][name]), (rank, name)
    keys = scenario(battery, "zero_rows_on_one_rank")[0]["memory_keys"]
    assert "spherewatch/uniformity" in keys and "spherewatch/second/uniformity" in keys


def test_bounded_gather_takes_proportional_random_subsets_identical_on_all_ranks(battery):
    r0, r1 = scenario(battery, "bounded_gather")
    assert r0["index"] == r1["index"] and r0["checksum"] == r1["checksum"]
    index = r0["index"]
    assert len(index) == 50
    from_rank0, from_rank1 = index[:18], index[18:]
    assert all(0 <= i < 37 for i in from_rank0) and len(set(from_rank0)) == 18
    assert all(37 <= i < 101 for i in from_rank1) and len(set(from_rank1)) == 32
    assert r0["labels_match"] and r1["labels_match"]


# ------------------------------------------------------------------------------------------------- sinks
def test_only_rank_zero_opens_and_writes_sinks(battery):
    r0, r1 = scenario(battery, "sinks_on_rank_zero_only")
    assert r0["open_sinks"] == 1 and r1["open_sinks"] == 0
    assert not os.path.exists(r1["path"])
    lines = Path(r0["path"]).read_text().splitlines()
    assert any("spherewatch/uniformity" in line for line in lines)


# -------------------------------------------------------------------------------------------------- stop
def test_stop_decision_is_or_reduced_over_ranks(battery):
    for rank, res in enumerate(scenario(battery, "stop_is_or_reduced")):
        assert res["flags"] == [True, False, True, True], f"rank {rank}: any_true gave {res['flags']}"
        assert res["flag_stop"] is True, f"rank {rank}: a stop set on rank 1 only did not reach rank {rank}"
        assert res["rule_stop"] is True, f"rank {rank}"
        assert res["fired"] == ["mean_cosine_threshold"], f"rank {rank}: {res['fired']}"
        assert res["head"]["mean_cosine"] > 0.9


def test_nan_on_one_rank_gives_the_same_decision_everywhere_without_hanging(battery):
    r0, r1 = scenario(battery, "nan_on_one_rank")
    assert r0["fired"] == r1["fired"] and "effective_rank_nonfinite" in r0["fired"]
    assert r0["stop"] is True and r1["stop"] is True
    assert close(r0["first"]["nonfinite_fraction"], 5 / 101) and close(r1["first"]["nonfinite_fraction"], 5 / 101)
    assert math.isnan(r0["first"]["effective_rank"]) and math.isnan(r1["first"]["effective_rank"])
    for res in (r0, r1):  # the next evaluation, on clean rows, still runs on both ranks
        assert "alignment" not in res["second"]  # no paired view in this scenario
        for name in ("uniformity", "effective_rank", "mean_cosine"):
            assert close(res["second"][name], res["ref_clean"][name]), name


# ------------------------------------------------------------------------------- missing taps and failures
def test_tap_observed_on_one_rank_only_uses_the_rows_that_exist(battery):
    for rank, res in enumerate(scenario(battery, "tap_on_one_rank")):
        assert close(res["extra"]["uniformity"], res["ref_extra"]), rank
        assert "alignment" not in res["extra"]  # no paired view on that tap
        for name in METRICS:
            assert close(res["embeddings"][name], res["ref"][name]), (rank, name)


def test_capture_failure_on_one_rank_does_not_hang(battery):
    r0, r1 = scenario(battery, "capture_failure_on_one_rank")
    for res in (r0, r1):
        assert close(res["first"]["uniformity"], res["ref_rank0"])
        assert close(res["second"]["uniformity"], res["ref_rank0"])
        assert res["third_faults"] == 1  # widths differ between ranks: the same error on both, no hang
        assert close(res["fourth"]["uniformity"], res["ref"])
    assert r1["faults"]["capture:embeddings"] == 2 and "capture:embeddings" not in r0["faults"]


def test_compute_failure_on_one_rank_still_reaches_every_collective(battery):
    r0, r1 = scenario(battery, "compute_raises_on_one_rank")
    ref = r0["ref"]
    for strict in ("False", "True"):
        a, b = r0[strict], r1[strict]
        assert a["in_step"] and b["in_step"], strict
        assert close(a["first"]["uniformity"], ref) and b["first"] == {}, strict
        assert close(a["second"]["uniformity"], ref) and close(b["second"]["uniformity"], ref), strict
        assert b["faults"]["metrics:embeddings"] == 1 and "metrics:embeddings" not in a["faults"]
    assert r0["False"]["raised"] is None and r1["False"]["raised"] is None
    assert r0["True"]["raised"] is None
    assert "injected failure inside compute" in r1["True"]["raised"]


def test_local_failures_inside_gather_rows_keep_ranks_in_step(battery):
    r0, r1 = scenario(battery, "local_failures_in_gather")
    assert r0["unusable"] == {"raised": None, "rows": 37, "has_pos": True, "equal": True}
    assert "Rank 1 could not hand its rows over" in r1["unusable"]["raised"]
    for res in (r0, r1):  # an allocation failure on rank 1 raises on every rank, before the data collectives
        assert "rank(s) [1]" in res["alloc"]["raised"]
        assert res["in_step"] is True
    assert "injected out of memory" in r1["alloc"]["raised"]


# --------------------------------------------------------------------------------------- single process
def test_without_process_group_rank_comes_from_environment(monkeypatch):
    assert not sw_dist.is_distributed()
    assert sw_dist.world_size() == 1
    monkeypatch.setenv("RANK", "3")
    assert sw_dist.rank() == 3
    monkeypatch.setenv("RANK", "not-a-number")
    assert sw_dist.rank() == 0
    monkeypatch.delenv("RANK")
    assert sw_dist.rank() == 0
