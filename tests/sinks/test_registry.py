"""The sink registry and the sinks' declared capabilities: the config's sink choices are the registry's names, each
entry says whether it is local and rebuildable, a sink states what it supports instead of being probed."""
from __future__ import annotations

import threading
import typing

import pytest

import spherewatch as sw
from spherewatch.delivery.registry import SINK_NAMES, SINKS, check_sink_names, sink_spec
from spherewatch.delivery.worker import Worker
from spherewatch.sinks import JsonlSink, MemorySink, MLflowSink, TensorBoardSink
from spherewatch.sinks.base import Capabilities, capabilities


def test_the_config_takes_exactly_the_registrys_sink_names():
    tuple_type, _ = typing.get_args(sw.MonitorConfig.model_fields["sinks"].annotation)  # Optional[Tuple[...]]
    literal, _ = typing.get_args(tuple_type)  # Tuple[Literal[...], ...]
    assert typing.get_args(literal) == SINK_NAMES == ("tensorboard", "mlflow", "wandb", "trackio", "jsonl", "memory")


def test_each_entry_says_where_it_writes_and_whether_another_process_can_rebuild_it(tmp_path):
    assert [n for n in SINK_NAMES if SINKS[n].local] == ["tensorboard", "trackio", "jsonl", "memory"]
    assert [n for n in SINK_NAMES if not SINKS[n].rebuildable] == ["trackio", "memory"]
    config = sw.MonitorConfig(log_dir=str(tmp_path), sinks=("jsonl",))
    assert sink_spec("jsonl", config, "k") == {"name": "jsonl", "path": str(tmp_path / "spherewatch.jsonl")}
    with pytest.raises(ValueError, match="Unknown sink 'neptune'; use one of: tensorboard, mlflow, wandb, trackio, jsonl, "
                       "memory"):
        check_sink_names(["neptune"])
    with pytest.raises(ValueError, match="tracking URI"):
        check_sink_names(["mlflow"], "htp://host")


def test_sinks_declare_what_they_support():
    assert capabilities(MemorySink()) == Capabilities()
    jsonl = capabilities(JsonlSink.__new__(JsonlSink))
    assert jsonl.params and not jsonl.batches and not jsonl.artifacts
    assert TensorBoardSink.supports_params and not TensorBoardSink.supports_artifacts
    assert MLflowSink.supports_params and MLflowSink.supports_batches and MLflowSink.supports_artifacts
    assert MLflowSink.batch_limit == 1000

    class Duck:  # only the sink methods: the basic calls, whatever else it has
        def log_scalars(self, step, scalars):
            pass

        def log_params(self, params):
            pass

    assert capabilities(Duck()) == Capabilities(wall_time=False)


def test_the_worker_keeps_its_errors_and_goes_on():
    seen, gate = [], threading.Event()

    def handle(item):
        if item == "bad":
            raise RuntimeError("boom")
        if item == "slow":
            gate.wait(5)
        seen.append(item)

    worker = Worker(handle)
    worker.start()
    worker.put("bad")
    worker.put(1)
    assert worker.barrier(5.0) and seen == [1]
    assert worker.errors == 1 and str(worker.last_error) == "boom"
    worker.put("slow")
    worker.put(2)
    assert not worker.close(0.05)  # stuck in "slow": close gives up at its deadline
    assert worker.abandon() == [2]  # what was still queued comes back to the caller
    gate.set()
