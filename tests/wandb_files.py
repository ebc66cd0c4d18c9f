"""Read an offline W&B run back from its own ``.wandb`` file: wandb's record framing (a LevelDB-style log of 32 KiB
blocks behind the ``:W&B`` header) decoded into wandb's own protobuf ``Record`` messages
(``wandb.proto.wandb_internal_pb2``). wandb >= 0.20 ships no Python reader (its service, written in Go, reads the
file), so the framing is read here and every record is parsed by wandb's schema."""
from __future__ import annotations

import glob
import json
import os
import struct
import time
from typing import Any, Dict, Iterator, List

import pytest

_BLOCK = 32768
_HEADER = 7  # crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def raw_records(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path} is not a .wandb file (header {data[:7]!r})"
    pos, parts = 7, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the block's trailer is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        if pos + _HEADER + length > len(data):  # the writer is still writing this record: read it next time
            break
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            parts = chunk
        elif kind == _MIDDLE:
            parts += chunk
        elif kind == _LAST:
            yield parts + chunk
            parts = b""


def records(path: str) -> List[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for raw in raw_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def _put(out: Dict[str, Any], item: Any) -> None:
    """``out[key] = value``; a nested key (a histogram's ``_type``, ``values``, ``bins``) into nested dicts."""
    path = list(item.nested_key) if item.nested_key else [item.key]
    for part in path[:-1]:
        out = out.setdefault(part, {})
    out[path[-1]] = json.loads(item.value_json)


class OfflineRun:
    """What an offline run's file holds: run ids, history rows, summary, config, metric definitions, alerts."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records = records(path)
        kinds = [r.WhichOneof("record_type") for r in self.records]
        self.run_ids = sorted({r.run.run_id for r, k in zip(self.records, kinds) if k == "run"})
        self.history: List[Dict[str, Any]] = []
        self.summary: Dict[str, Any] = {}
        self.config: Dict[str, Any] = {}
        self.metrics: List[Any] = []
        self.alerts: List[Any] = []
        self.finished = "exit" in kinds
        for r, kind in zip(self.records, kinds):
            if kind == "history":
                row: Dict[str, Any] = {}
                for item in r.history.item:
                    _put(row, item)
                self.history.append(row)
            elif kind == "summary":
                for u in r.summary.update:
                    _put(self.summary, u)
            elif kind == "config":
                for u in r.config.update:
                    _put(self.config, u)
            elif kind == "run":
                for u in r.run.config.update:
                    _put(self.config, u)
            elif kind == "metric":
                self.metrics.append(r.metric)
            elif kind == "alert":
                self.alerts.append(r.alert)

    def rows_with(self, key: str) -> List[Dict[str, Any]]:
        return [row for row in self.history if key in row]


def offline_runs(wandb_dir: str, timeout: float = 30.0) -> List[OfflineRun]:
    """Every offline run under ``wandb_dir`` (``WANDB_DIR``), each read once its ``exit`` record is written:
    ``run.finish()`` returns before wandb's service has written the whole file (a read that lands mid-write, seen
    once in a full suite on a loaded machine as a protobuf ``DecodeError``, is retried)."""
    paths = sorted(glob.glob(os.path.join(str(wandb_dir), "**", "offline-run-*", "run-*.wandb"), recursive=True))
    out = []
    for path in paths:
        end = time.monotonic() + timeout
        while True:
            try:
                run = OfflineRun(path)
            except Exception:  # caught mid-write (a block being filled): the service is not done with the file
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
                continue
            if run.finished or time.monotonic() > end:
                break
            time.sleep(0.05)
        out.append(run)
    return out


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Offline W&B under ``tmp_path`` (``WANDB_DIR``), quiet, no git; no run left active afterwards."""
    import wandb

    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                        "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(name, value)
    wandb.teardown()  # wandb's process-wide settings may have been read from another test's environment
    yield tmp_path
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()


def evaluations(run: OfflineRun, prefix: str = "spherewatch") -> List[Dict[str, Any]]:
    """spherewatch's evaluations in the run's history, in order: the rows holding ``<prefix>/step`` merged per step
    (an evaluation's spectra and alert count can land in the host's next row when the host committed between
    spherewatch's calls). Asserts that no spherewatch value was logged twice for one step (the alert count excepted:
    it is updated with the evaluation's alerts, the latest wins) and that the steps come in order."""
    step_key, count_key = f"{prefix}/step", f"{prefix}/alerts/count"
    merged: Dict[int, Dict[str, Any]] = {}
    order: List[int] = []
    for row in run.history:
        if step_key not in row:
            continue
        step = row[step_key]
        if step not in merged:
            assert not order or step > order[-1], f"evaluation {step} logged after {order[-1]}"
            merged[step] = {step_key: step}
            order.append(step)
        for key, value in row.items():
            if not key.startswith(prefix + "/") or key == step_key:
                continue
            assert key == count_key or key not in merged[step], f"{key} logged twice at step {step}"
            merged[step][key] = value
    return [merged[step] for step in order]
