"""Read an offline W&B run back from its own ``.wandb`` file: wandb's record framing (a LevelDB-style log of 32 KiB
blocks behind the ``:W&B`` header) decoded into wandb's own protobuf ``Record`` messages
(``wandb.proto.wandb_internal_pb2``). wandb >= 0.20 ships no Python reader (its service, written in Go, reads the
file), so the framing is read here and every record is parsed by wandb's schema."""
from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any, Dict, Iterator, List

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


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


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
        for r, kind in zip(self.records, kinds):
            if kind == "history":
                self.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                for u in r.summary.update:
                    self.summary[_key(u)] = json.loads(u.value_json)
            elif kind == "config":
                for u in r.config.update:
                    self.config[_key(u)] = json.loads(u.value_json)
            elif kind == "run":
                for u in r.run.config.update:
                    self.config[_key(u)] = json.loads(u.value_json)
            elif kind == "metric":
                self.metrics.append(r.metric)
            elif kind == "alert":
                self.alerts.append(r.alert)

    def rows_with(self, key: str) -> List[Dict[str, Any]]:
        return [row for row in self.history if key in row]


def offline_runs(wandb_dir: str) -> List[OfflineRun]:
    """Every offline run under ``wandb_dir`` (``WANDB_DIR``)."""
    paths = sorted(glob.glob(os.path.join(str(wandb_dir), "**", "offline-run-*", "run-*.wandb"), recursive=True))
    return [OfflineRun(p) for p in paths]
