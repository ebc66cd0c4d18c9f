"""One rank of the 2-process gloo battery run by test_distributed.py (not collected: no ``test_`` prefix).

Usage: ``python _ddp_worker.py RANK WORLD_SIZE PORT OUT_DIR``. Runs every scenario below, in order, in one process
group, and writes ``OUT_DIR/rank<RANK>.json`` (``{scenario: result dict or {"error": ...}}``) after each scenario,
so that a hang or a crash still leaves the results so far. Every scenario runs the same collectives on both
ranks; a scenario that desynchronised the ranks would make the next one fail or time out (the process group
timeout is short), which the parent test reports.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist

import spherewatch as sw
import spherewatch.evaluation as monitor_module  # where compute_tap_metrics is called
from spherewatch import distributed as sw_dist
from spherewatch.alerts import NonFiniteRule, ThresholdRule

D = 16
COUNTS = (37, 64)  # rows per rank in the uneven scenarios
# redundancy is one batch statistic of the gathered rows (correlations over all of them), not a mean over ranks
METRICS = ("uniformity", "effective_rank", "alignment", "mean_cosine", "redundancy")


def global_rows(n: int = sum(COUNTS), d: int = D, seed: int = 0):
    """The same global batch on every rank: (z, z_pos, labels)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    z_pos = z + 0.3 * torch.randn(n, d, generator=g)
    labels = torch.randint(0, 5, (n,), generator=g)
    return z, z_pos, labels


def my_slice(rank: int, counts=COUNTS):
    start = sum(counts[:rank])
    return slice(start, start + counts[rank])


def reference(z, z_pos):
    """Single-process metrics of the concatenated rows."""
    return {
        "uniformity": sw.metrics.uniformity(z).item(),
        "effective_rank": sw.metrics.effective_rank(z).item(),
        "alignment": sw.metrics.alignment(z, z_pos).item(),
        "mean_cosine": sw.metrics.mean_cosine(z).item(),
        "redundancy": sw.metrics.redundancy(z, z_pos).item(),
    }


def values_of(mon, tap: str = "embeddings"):
    keys = mon.config.keys
    return {parts[1]: v for k, v in mon.last_values.items() if (parts := keys.parse(k)) is not None and parts[0] == tap}


def new_monitor(out: str, rank: int, name: str, **kw):
    kw.setdefault("every_n_steps", 1)
    kw.setdefault("metrics", METRICS)
    kw.setdefault("warn", False)
    kw.setdefault("log_dir", os.path.join(out, f"{name}-logs-rank{rank}"))
    kw.setdefault("sinks", ("memory",))
    return sw.Monitor(**kw)


# ----------------------------------------------------------------------------------------------- scenarios
def uneven_batches(rank: int, out: str):
    """37 and 64 rows: gather_rows and the Monitor give the metrics of the concatenation."""
    z, z_pos, labels = global_rows()
    mine = my_slice(rank)
    gz, gp, gl = sw_dist.gather_rows((z[mine], z_pos[mine], labels[mine]))
    gathered_equal = bool(torch.equal(gz, z) and torch.equal(gp, z_pos) and torch.equal(gl, labels))
    mon = new_monitor(out, rank, "uneven")
    mon.observe(z[mine], z_pos[mine])
    mon.step(0)
    got = values_of(mon)
    mon.close()
    return {"gathered_equal": gathered_equal, "monitor": got, "direct": reference(gz, gp), "ref": reference(z, z_pos)}


def zero_rows_on_one_rank(rank: int, out: str):
    """Rank 0 holds no rows (an empty batch, and no call at all for a second tap); rank 1 all of them."""
    z, z_pos, _ = global_rows()
    mine = z if rank == 1 else z[:0]
    mine_pos = z_pos if rank == 1 else z_pos[:0]
    gz, gp, _ = sw_dist.gather_rows((mine, mine_pos, None))
    none_gz, _, _ = sw_dist.gather_rows((None, None, None) if rank == 0 else (z, None, None))
    nobody = sw_dist.gather_rows((None, None, None))
    mon = new_monitor(out, rank, "zero")
    mon.observe(mine, mine_pos)
    if rank == 1:
        mon.observe(z, z_pos, tap="second")
    mon.step(0)
    memory = mon.sinks[0].keys() if rank == 0 else None
    result = {
        "gathered_equal": bool(torch.equal(gz, z) and torch.equal(gp, z_pos) and torch.equal(none_gz, z)),
        "nobody_has_rows": all(x is None for x in nobody),
        "monitor": values_of(mon),
        "monitor_second": values_of(mon, "second"),
        "memory_keys": memory,
        "ref": reference(z, z_pos),
    }
    mon.close()
    return result


def sinks_on_rank_zero_only(rank: int, out: str):
    """Each rank names its own JSONL file: only rank 0's is created."""
    z, _, _ = global_rows()
    path = os.path.join(out, f"metrics-rank{rank}.jsonl")
    mon = sw.Monitor(every_n_steps=1, sinks=("jsonl",), jsonl_path=path, log_dir=os.path.join(out, f"jsonl-{rank}"),
                     metrics=("uniformity",), warn=False)
    for step in range(3):
        mon.observe(z[my_slice(rank)])
        mon.step(step)
    open_sinks = len(mon.sinks)
    mon.close()
    return {"path": path, "open_sinks": open_sinks}


def stop_is_or_reduced(rank: int, out: str):
    """any_true, a locally set stop flag, and a stop rule that only rank 1's tap can trigger."""
    flags = [sw_dist.any_true(rank == 1), sw_dist.any_true(False), sw_dist.any_true(True), sw_dist.any_true(rank == 0)]
    z, _, _ = global_rows()
    mon = new_monitor(out, rank, "stop-flag", alerts=False)
    mon.observe(z[my_slice(rank)])
    if rank == 1:
        mon._should_stop = True  # e.g. restored from this rank's checkpoint: a stop known on one rank only
    mon.step(0)
    flag_stop = mon.should_stop
    mon.close()

    rule = ThresholdRule(metric="mean_cosine", tap="head", above=0.9, action="stop")
    mon = new_monitor(out, rank, "stop-rule", rules=(rule,))
    mon.observe(z[my_slice(rank)])
    if rank == 1:  # a collapsed head, observed on rank 1 only
        mon.observe(torch.ones(8, D) + 1e-3 * torch.randn(8, D), tap="head")
    fired = [a.rule for a in mon.step(0)]
    rule_stop = mon.should_stop
    head = values_of(mon, "head")
    mon.close()
    return {"flags": flags, "flag_stop": flag_stop, "rule_stop": rule_stop, "fired": fired, "head": head}


def nan_on_one_rank(rank: int, out: str):
    """Rank 1 hands over NaN rows: both ranks take the same decision, and the next evaluation still runs."""
    z, z_pos, _ = global_rows()
    mine = z[my_slice(rank)].clone()
    if rank == 1:
        mine[:5] = float("nan")
    mon = new_monitor(out, rank, "nan", metrics=METRICS + ("nonfinite_fraction",),
                      rules=(NonFiniteRule(metric="effective_rank", action="stop"),))
    mon.observe(mine)
    fired = sorted(a.rule for a in mon.step(0))
    first = values_of(mon)
    stop = mon.should_stop
    mon.observe(z[my_slice(rank)])
    mon.step(1)
    second = values_of(mon)
    mon.close()
    return {"fired": fired, "stop": stop, "first": first, "second": second, "ref_clean": reference(z, z_pos)}


def tap_on_one_rank(rank: int, out: str):
    """Tap "extra" is observed on rank 0 only: its metrics come from rank 0's rows, on both ranks."""
    z, z_pos, _ = global_rows()
    extra = global_rows(n=40, seed=3)[0]
    mon = new_monitor(out, rank, "tap")
    mon.observe(z[my_slice(rank)], z_pos[my_slice(rank)])
    if rank == 0:
        mon.observe(extra, tap="extra")
    mon.step(0)
    result = {"extra": values_of(mon, "extra"), "embeddings": values_of(mon),
              "ref_extra": sw.metrics.uniformity(extra).item(), "ref": reference(z, z_pos)}
    mon.close()
    return result


def capture_failure_on_one_rank(rank: int, out: str):
    """Rank 1's capture fails (3-D batch without pooling; then a list); then the ranks disagree on D."""
    z, _, _ = global_rows()
    mon = new_monitor(out, rank, "capture", metrics=("uniformity",))
    if rank == 1:
        mon.observe(torch.randn(4, 3, D))
    else:
        mon.observe(z[my_slice(0)])
    mon.step(0)
    first = values_of(mon)
    if rank == 1:
        mon.observe([[1.0] * D])
    else:
        mon.observe(z[my_slice(0)])
    mon.step(1)
    second = values_of(mon)
    mon.observe(z[my_slice(rank)][:, : (D if rank == 0 else D // 2)])  # width mismatch between ranks
    mon.step(2)
    third_faults = mon.faults.get("distributed", 0)
    mon.observe(z[my_slice(rank)])
    mon.step(3)
    fourth = values_of(mon)
    faults = dict(mon.faults)
    mon.close()
    return {"first": first, "second": second, "third_faults": third_faults, "fourth": fourth, "faults": faults,
            "ref_rank0": sw.metrics.uniformity(z[my_slice(0)]).item(), "ref": sw.metrics.uniformity(z).item()}


def compute_raises_on_one_rank(rank: int, out: str):
    """compute_tap_metrics raises on rank 1 (fault injected in that process): the collectives are still reached;
    with strict=True, rank 1's step() raises only after them, and the next evaluation runs on both ranks."""
    z, _, _ = global_rows()
    original = monitor_module.compute_tap_metrics

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure inside compute")

    results = {}
    for strict in (False, True):
        mon = new_monitor(out, rank, f"compute-{strict}", strict=strict, alerts=False)
        if rank == 1:
            monitor_module.compute_tap_metrics = broken
        raised = None
        try:
            mon.observe(z[my_slice(rank)])
            mon.step(0)
        except sw.SpherewatchError as err:
            raised = str(err)
        finally:
            monitor_module.compute_tap_metrics = original
        first = values_of(mon)
        stop = sw_dist.any_true(False)  # one more collective: the ranks are still in step
        mon.observe(z[my_slice(rank)])
        mon.step(1)
        results[str(strict)] = {"raised": raised, "first": first, "in_step": stop is False,
                                "second": values_of(mon), "faults": dict(mon.faults)}
        mon.close()
    results["ref"] = sw.metrics.uniformity(z).item()
    return results


def local_failures_in_gather(rank: int, out: str):
    """gather_rows: unusable rows on rank 1 (contributes none, raises after the collectives); an allocation /
    sub-sampling failure on rank 1 (every rank raises before the data collectives)."""
    z, z_pos, _ = global_rows()
    mine = my_slice(rank)
    result = {}
    bad = (z[mine], z_pos[mine][:, :3], None) if rank == 1 else (z[mine], z_pos[mine], None)
    try:
        gz, gp, _ = sw_dist.gather_rows(bad)
        result["unusable"] = {"raised": None, "rows": gz.shape[0], "has_pos": gp is not None,
                              "equal": bool(torch.equal(gz, z[mine]))}
    except sw.SpherewatchError as err:
        result["unusable"] = {"raised": str(err)}
    original = torch.randperm

    def broken(*args, **kwargs):
        raise RuntimeError("injected out of memory")

    if rank == 1:
        torch.randperm = broken
    try:
        sw_dist.gather_rows((z[mine], None, None), max_rows=50)
        result["alloc"] = {"raised": None}
    except sw.SpherewatchError as err:
        result["alloc"] = {"raised": str(err)}
    finally:
        torch.randperm = original
    result["in_step"] = sw_dist.any_true(rank == 1)
    return result


def bounded_gather(rank: int, out: str):
    """max_rows=50 over 37 + 64 rows: 18 and 32 rows, a subset of each rank's rows, the same on both ranks."""
    z, _, labels = global_rows()
    mine = my_slice(rank)
    gz, _, gl = sw_dist.gather_rows((z[mine], None, labels[mine]), max_rows=50, seed=7)
    key = {tuple(row): i for i, row in enumerate(z.tolist())}
    index = [key.get(tuple(row), -1) for row in gz.tolist()]
    labels_match = all(i >= 0 and labels[i].item() == lab for i, lab in zip(index, gl.tolist()))
    return {"index": index, "labels_match": labels_match, "checksum": gz.double().sum().item()}


def many_views(rank: int, out: str):
    """observe(views=(B, 4, D)) on 37 + 64 rows: every view is gathered; LiDAR of all four views and alignment of
    views 0 and 1 equal the single-process values."""
    g = torch.Generator().manual_seed(11)
    views = torch.randn(sum(COUNTS), 1, D, generator=g) + 0.3 * torch.randn(sum(COUNTS), 4, D, generator=g)
    mine = views[my_slice(rank)]
    gz, gp, _ = sw_dist.gather_rows((mine[:, 0], mine[:, 1:], None))
    gathered_equal = bool(torch.equal(gz, views[:, 0]) and torch.equal(gp, views[:, 1:]))
    mon = new_monitor(out, rank, "views", metrics=("lidar", "alignment"))
    mon.observe(views=mine)
    mon.step(0)
    got = values_of(mon)
    mon.close()
    ref = {"lidar": sw.metrics.lidar(views).item(), "alignment": sw.metrics.alignment(views[:, 0], views[:, 1]).item()}
    return {"gathered_equal": gathered_equal, "monitor": got, "ref": ref}


def confirmation_evaluation(rank: int, out: str):
    """A collapse from step 10, every 50 steps: the zone entered at the first trained evaluation (step 50) is
    confirmed at an evaluation the rule asks for (step 60): every rank evaluates there (no rank left in a collective
    alone) and sees the alert."""
    g = torch.Generator().manual_seed(20 + rank)
    direction = torch.randn(1, D, generator=torch.Generator().manual_seed(5))
    mon = new_monitor(out, rank, "confirm", every_n_steps=50, metrics=("mean_cosine",))
    for step in range(1, 71):
        spread = 1.0 if step < 10 else 0.02
        mon.observe(direction + spread * torch.randn(COUNTS[rank], D, generator=g))
        mon.step(step)
    steps = [s for s, _ in mon.sink("memory").history("spherewatch/mean_cosine")] if rank == 0 else None
    alerts = [(a.rule, a.step) for a in mon.alerts if a.status == "fired"]
    evaluations = mon.state_dict()["evaluations"]
    mon.close()
    return {"steps": steps, "alerts": alerts, "evaluations": evaluations}


def change_marked_on_one_rank(rank: int, out: str):
    """From step 41 every rank's batch sits in one corner; only rank 0 marks the change (as code under
    ``if rank == 0`` would): the mark rides along to rank 1 at the next evaluation, so both ranks' rules pause, report
    the change at step 70 and alert the complete collapse from there alike (no rank left alone in a collective)."""
    g = torch.Generator().manual_seed(30 + rank)
    corner = torch.randn(1, D, generator=torch.Generator().manual_seed(6))
    mon = new_monitor(out, rank, "marked", every_n_steps=10, metrics=("uniformity", "effective_rank", "mean_cosine"))
    for step in range(1, 101):
        if step == 41 and rank == 0:
            mon.mark_change("into a corner")
        z = torch.randn(COUNTS[rank], D, generator=g)
        mon.observe(corner + 0.02 * z if step >= 41 else z)
        mon.step(step)
    alerts = [(a.rule, a.step, a.severity) for a in mon.alerts if a.status == "fired"]
    evaluations = mon.state_dict()["evaluations"]
    mon.close()
    return {"alerts": alerts, "evaluations": evaluations}


SCENARIOS = [
    uneven_batches,
    confirmation_evaluation,
    change_marked_on_one_rank,
    many_views,
    zero_rows_on_one_rank,
    sinks_on_rank_zero_only,
    stop_is_or_reduced,
    nan_on_one_rank,
    tap_on_one_rank,
    capture_failure_on_one_rank,
    compute_raises_on_one_rank,
    local_failures_in_gather,
    bounded_gather,
]


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=45))
    results = {}
    path = os.path.join(out, f"rank{rank}.json")
    try:
        for scenario in SCENARIOS:
            try:
                results[scenario.__name__] = scenario(rank, out)
            except Exception:  # recorded; the next scenario still runs
                results[scenario.__name__] = {"error": traceback.format_exc()}
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(results, fh)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
