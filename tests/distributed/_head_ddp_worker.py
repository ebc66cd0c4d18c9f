"""One rank of the head-tap DDP test (tests/distributed/test_head_ddp.py): argv rank, world, port, out dir."""
import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import spherewatch as sw
from spherewatch.metrics.head import head_stats, head_values


def batch(rank, step, k=48):
    g = torch.Generator().manual_seed(1000 * rank + step)
    t = torch.randn(16 + 8 * rank, k, generator=g) * 2
    s = t + torch.randn(t.shape, generator=g)
    return t, s


def main():
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=45))
    res = {}
    # 1. both ranks hold head rows (different row counts) and embeddings: the metrics of the union of the rows
    mon = sw.Monitor(every_n_steps=2, sinks=("memory",), warn=False, strict=True)
    for step in range(1, 5):
        t, s = batch(rank, step)
        mon.observe(torch.randn(32, 8))
        mon.observe_head(t, s, teacher_temp=0.5, student_temp=0.2)
        mon.step(step)
    mon.close()
    res["values"] = {k: v for k, v in mon.last_values.items() if "/head/" in k}
    res["last_step"] = mon.last_evaluation_step
    # the single-process reference: every rank's rows of the window evaluated last (window_steps=1: step 4)
    rows = [batch(r, 4) for r in range(world)]
    ref = head_values(head_stats(torch.cat([a for a, _ in rows]), torch.cat([b for _, b in rows]),
                                 teacher_temp=0.5, student_temp=0.2))
    res["reference"] = {k: float(v) for k, v in ref.items()}
    # 2. only rank 0 has a head tap (rank 1 observes nothing): the collectives still meet, rank 1 logs rank 0's
    mon = sw.Monitor(every_n_steps=2, sinks=("memory",), warn=False, strict=True)
    for step in range(1, 3):
        if rank == 0:
            t, _ = batch(0, step)
            mon.observe_head(t, teacher_temp=0.5)
        mon.step(step)
    mon.close()
    res["one_rank"] = {k: v for k, v in mon.last_values.items() if "/head/" in k}
    ref = head_values(head_stats(batch(0, 2)[0], teacher_temp=0.5))
    res["one_rank_reference"] = {k: float(v) for k, v in ref.items()}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
