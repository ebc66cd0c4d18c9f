"""The spool's one format: every record type round-trips through the versioned codec, a spool folder written by
spherewatch 0.1 (no version field: the writer's queue lines, ``.done`` marks, the sinks' ``op`` lines) is still
replayed into its run's sinks, and a spool of a newer format is refused with the folder named, never rewritten."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

import spherewatch as sw
from spherewatch.delivery import record
from spherewatch.delivery.record import AlertEvent, Evaluation, Histogram, NewerFormatError, Scalars
from spherewatch.sinks import MemorySink, ResilientSink, read_jsonl

U = "spherewatch/uniformity"


def _alert(step=3, value=float("nan")):
    return sw.Alert("nonfinite", U, value, step, "critical", "NaN in the embeddings")


@pytest.mark.parametrize("rec", [
    Scalars(1, 10.0, {U: -3.5, "spherewatch/mean_cosine": float("inf")}),
    Histogram(2, 11.0, "spherewatch/spectrum", np.array([0.5, float("nan")])),
    AlertEvent(_alert()),
    Evaluation(7, 3, 12.0, {U: float("-inf")}, {"spherewatch/spectrum": [0.7, 0.3]}, [_alert()], only=(1,)),
])
def test_every_record_type_round_trips_through_one_versioned_line(rec):
    line = record.encode(rec)
    fields = json.loads(line)
    assert fields["v"] == record.FORMAT_VERSION and line.endswith(b"\n")
    back = record.decode(line)
    assert type(back) is type(rec) and record.encode(back) == line  # non-finite floats included


def test_a_line_of_a_newer_format_is_refused():
    with pytest.raises(NewerFormatError, match="newer spherewatch"):
        record.decode(b'{"v": 99, "op": "scalars", "step": 1, "time": 1.0, "values": {}}')


def test_decode_float_reads_the_json_strings_and_pythons_spellings():
    assert math.isnan(record.decode_float("NaN")) and math.isnan(record.decode_float("nan"))
    assert record.decode_float("-Infinity") == record.decode_float("-inf") == -math.inf


def _old_run_folder(spool_dir, key, jsonl_path):
    """A spool folder as spherewatch 0.1 left it when its process was killed: run.json, the JSONL sink's backlog
    (``op`` lines, no version) and an overflow file whose first record was already handed over (``.done``)."""
    folder = spool_dir / key
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_key": key, "sinks": [{"name": "jsonl",
                                                                             "path": str(jsonl_path)}]}))
    alert = _alert(step=1).to_dict()
    alert["value"] = "NaN"
    (folder / "jsonl-0.spool.jsonl").write_text(
        json.dumps({"op": "scalars", "step": 1, "time": 100.0, "values": {U: "NaN"}}) + "\n"
        + json.dumps({"op": "alert", "alert": alert}) + "\n")
    queue = folder / "queue-0000000000001-123-abcdef.spool.jsonl"
    queue.write_text("".join(json.dumps({"seq": seq, "step": step, "time": 100.0 + step, "values": {U: -float(step)},
                                         "hists": {}, "alerts": []}) + "\n" for seq, step in ((0, 2), (1, 3))))
    (folder / "queue-0000000000001-123-abcdef.done").write_text("0")
    return folder


def test_a_spool_folder_written_by_0_1_is_replayed_once_into_its_sinks(tmp_path):
    spool_dir, jsonl_path = tmp_path / "spool", tmp_path / "old.jsonl"
    folder = _old_run_folder(spool_dir, "0123456789abcdef", jsonl_path)
    # (a crashed run's local file is replayed only when it is this run's: its own destination, or inside its log_dir)
    mon = sw.Monitor(sinks=("memory",), spool_dir=str(spool_dir), log_dir=str(tmp_path), warn=False)
    mon.log(0, {"train/loss": 1.0})  # the writer starts, finds the orphan and replays it
    mon.close()
    logged = read_jsonl(jsonl_path)
    assert [s for s, _ in logged["scalars"][U]] == [1, 3]  # the sink's backlog, then the overflow after its .done
    assert math.isnan(logged["scalars"][U][0][1]) and logged["scalars"][U][1][1] == -3.0
    assert [a.rule for a in logged["alerts"]] == ["nonfinite"]
    assert not folder.exists()


def test_a_spool_of_a_newer_format_is_left_in_place_and_its_folder_named(tmp_path, caplog):
    spool_dir = tmp_path / "spool"
    folder = spool_dir / "fedcba9876543210"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_key": "fedcba9876543210", "sinks": [{"name": "memory"}]}))
    newer = folder / "queue-0000000000002-1-abcdef.spool.jsonl"
    newer.write_text(json.dumps({"v": 99, "op": "evaluation", "seq": 0, "step": 1, "time": 1.0}) + "\n")
    with caplog.at_level(logging.ERROR, logger="spherewatch"):
        mon = sw.Monitor(sinks=("memory",), spool_dir=str(spool_dir), log_dir=str(tmp_path / "runs"), warn=False)
        mon.log(0, {"train/loss": 1.0})
        mon.close()
    assert newer.exists() and str(folder) in caplog.text and "newer spherewatch" in caplog.text


def test_a_sink_spool_of_a_newer_format_is_not_rewritten(tmp_path, caplog):
    spool = tmp_path / "jsonl-0.spool.jsonl"
    spool.write_text(json.dumps({"v": 99, "op": "scalars", "step": 1, "time": 1.0, "values": {}}) + "\n")
    with caplog.at_level(logging.ERROR, logger="spherewatch"):
        sink = ResilientSink(MemorySink(), spool_path=str(spool))
    sink.log_scalars(2, {U: -1.0})
    sink.close()
    assert "newer spherewatch" in caplog.text and str(tmp_path) in caplog.text
    assert json.loads(spool.read_text())["v"] == 99
