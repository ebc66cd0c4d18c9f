"""The number of rows behind each evaluation is logged, and every micro-batch can be taken under accumulation."""
import torch

import spherewatch as sw


def _rows_per_evaluation(**config):
    mon = sw.Monitor(sinks=("memory",), every_n_steps=2, warn=False, **config)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 5):
        for _ in range(4):  # four micro-batches of 8 rows per optimizer step
            mon.observe(torch.randn(8, 16, generator=g))
        mon.step(step)
    sink = mon.sink("memory")
    mon.close()
    return [v for _, v in sink.history("spherewatch/rows")]


def test_rows_are_logged_and_one_micro_batch_per_step_by_default():
    assert set(_rows_per_evaluation()) == {8.0}


def test_every_micro_batch_takes_all_of_them_up_to_max_samples():
    assert set(_rows_per_evaluation(every_micro_batch=True)) == {32.0}
    assert set(_rows_per_evaluation(every_micro_batch=True, max_samples=20)) == {20.0}
