"""Head taps under torch.distributed (issue 18): two real gloo ranks sum the heads' sufficient statistics (one
all_reduce of O(K) numbers, never the rows) and log the metrics of the union of their rows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gloo_ranks import run_ranks

WORKER = Path(__file__).with_name("_head_ddp_worker.py")
pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("head_ddp")
    run_ranks(WORKER, lambda r, port: [str(r), "2", port, str(out)], out, timeout=120, label="head taps")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_head_metrics_are_those_of_every_ranks_rows(results):
    for res in results:
        assert res["last_step"] == 4
        got = {k.rsplit("/", 1)[1]: v for k, v in res["values"].items()}
        assert set(got) == set(res["reference"]) and "teacher_student_kl" in got
        for name, ref in res["reference"].items():
            assert got[name] == pytest.approx(ref, rel=1e-5, abs=1e-6), name
    assert results[0]["values"] == results[1]["values"]


def test_a_rank_without_a_head_tap_meets_the_collectives(results):
    for res in results:
        got = {k.rsplit("/", 1)[1]: v for k, v in res["one_rank"].items()}
        assert got and "teacher_student_kl" not in got
        for name, ref in res["one_rank_reference"].items():
            assert got[name] == pytest.approx(ref, rel=1e-5, abs=1e-6), name
