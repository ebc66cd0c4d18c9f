"""Where metrics, spectra and alerts go: TensorBoard, MLflow, Weights & Biases, trackio, a JSON-lines file, memory.

Every sink implements :class:`Sink`; the Monitor wraps each one in :class:`ResilientSink` so that a
failing destination is reported once and retried, and never takes training down. The TensorBoard,
MLflow, wandb and trackio backends are imported only when their sink is constructed.
"""
from spherewatch.delivery.retry import ResilientSink
from spherewatch.sinks.base import Sink
from spherewatch.sinks.jsonl import JsonlSink, read_jsonl
from spherewatch.sinks.memory import MemorySink
from spherewatch.sinks.mlflow import MLflowSink
from spherewatch.sinks.tensorboard import TensorBoardSink
from spherewatch.sinks.trackio import TrackioSink
from spherewatch.sinks.wandb import WandbSink

__all__ = ["JsonlSink", "MLflowSink", "MemorySink", "ResilientSink", "Sink", "TensorBoardSink", "TrackioSink", "WandbSink",
           "read_jsonl"]
