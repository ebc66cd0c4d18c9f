"""The record formats the report reads back, imported from where they are written (one place for the report).

The report reads what the sinks wrote: JSONL files through the JSONL sink's reader and the record codec's float
decoder, MLflow stores whose address it shows with the MLflow run helpers' credential redaction. Every import of a
writer's module by the report package goes through here.

Example:
    >>> decode_float("NaN") != decode_float("NaN"), decode_float(1)
    (True, 1.0)
    >>> redact_uri("http://user:secret@host:5000")
    'http://***@host:5000'
"""
from __future__ import annotations

from spherewatch.delivery.record import decode_float
from spherewatch.sinks.jsonl import read_jsonl
from spherewatch.sinks.mlflow_run import redact_uri

__all__ = ["decode_float", "read_jsonl", "redact_uri"]
