"""The sink registry: one entry per backend a sink *name* (the ``sinks`` config field) opens.

An entry says what the backend needs (a module, and the pip command that installs it), how to check a configuration
without any I/O, what the sink is for a given configuration (its *spec*: a small JSON-able dict, decided on the
training thread and kept in the spool folder's ``run.json``), how to open it from that spec (on the writer thread),
whether it is local (opened at once, not a server), and whether another process can rebuild it from its spec to
replay a crashed run's spool. The config's ``SinkName`` choices, the writer and the adapters read it; a new sink is
its module plus one entry here.

Example:
    >>> SINK_NAMES
    ('tensorboard', 'mlflow', 'wandb', 'trackio', 'jsonl', 'memory')
    >>> SINKS["memory"].local, SINKS["memory"].rebuildable
    (True, False)
    >>> check_sink_names(["neptune"], None)
    Traceback (most recent call last):
    ...
    ValueError: Unknown sink 'neptune'; use one of: tensorboard, mlflow, wandb, trackio, jsonl, memory.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

__all__ = ["SINKS", "SINK_NAMES", "SinkEntry", "build_sink", "check_sink_names", "sink_entry", "sink_spec"]

Spec = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SinkEntry:
    """One sink backend.

    Attributes:
        name: the sink name in the config (``sinks=("tensorboard",)``).
        build: open the sink a spec describes (writer thread; may do file or network I/O and raise).
        spec: what the sink is for ``(config, run_key)`` (training thread: MLflow's active run is thread-local).
        requires: a module that must be importable, and ``install``: the command that installs it.
        check: validate the configuration without I/O (raises ``ValueError``).
        local: opened at once (a folder, a file, memory), not a server that may not be up yet.
        rebuildable: another process can open it again from its spec (a crashed run's spool is replayed into it).
        resume: the spec of a resumed run, from the spec saved in its ``run.json`` (``None``: nothing saved).
        opened: what an opened sink adds to its spec (e.g. the MLflow run it created), saved in ``run.json``.
        text_fields: config fields it reads whose environment variables are taken verbatim (no JSON parsing).
    """

    name: str
    build: Callable[[Mapping[str, Any]], Any]
    spec: Callable[[Any, str], Spec]
    requires: Optional[str] = None
    install: str = ""
    check: Optional[Callable[[Any], None]] = None
    local: bool = True
    rebuildable: bool = True
    resume: Optional[Callable[[Spec, Mapping[str, Any], bool], Spec]] = None
    opened: Optional[Callable[[Any], Spec]] = None
    text_fields: Tuple[str, ...] = ()

    def available(self) -> None:
        """Raise ``ModuleNotFoundError`` naming the fix when the backend's module is not installed."""
        if self.requires is not None and importlib.util.find_spec(self.requires) is None:
            raise ModuleNotFoundError(f"{self.install}")


# ------------------------------------------------------------------------------------------------------ tensorboard
def _tensorboard(spec: Mapping[str, Any]) -> Any:
    from spherewatch.sinks.tensorboard import TensorBoardSink

    return TensorBoardSink(spec["log_dir"], prefix=spec.get("prefix", "spherewatch"))


def _tensorboard_spec(config: Any, run_key: str) -> Spec:
    return {"log_dir": os.path.abspath(config.log_dir), "prefix": config.prefix}


# ----------------------------------------------------------------------------------------------------------- mlflow
def _mlflow(spec: Mapping[str, Any]) -> Any:
    from spherewatch.sinks.mlflow import MLflowSink

    return MLflowSink(spec.get("tracking_uri"), run_id=spec.get("run_id"), experiment_name=spec.get("experiment_name"),
                      run_name=spec.get("run_name"), prefix=spec.get("prefix", "spherewatch"),
                      run_key=spec.get("run_key"), find_run=bool(spec.get("find_run")),
                      created_run=bool(spec.get("run_id") and spec.get("created_run")))


def _mlflow_spec(config: Any, run_key: str) -> Spec:
    from spherewatch.sinks.mlflow_run import active_run

    spec: Spec = {"tracking_uri": config.tracking_uri, "run_id": config.run_id,
                  "experiment_name": config.experiment_name, "run_name": config.run_name, "prefix": config.prefix,
                  "run_key": run_key}
    active = active_run(config.tracking_uri) if config.run_id is None else None  # the host's run: no second one
    if active is not None:
        spec.update(run_id=active[0], tracking_uri=active[1])
    return spec  # tracking_uri None: the sink resolves MLflow's default on the writer thread


def _mlflow_resume(spec: Spec, saved: Mapping[str, Any], adopted: bool) -> Spec:
    """A resumed run logs to the MLflow run it created (saved in run.json), or finds it by its run-key tag."""
    if spec.get("run_id"):
        return spec
    if saved.get("run_id"):
        return {**spec, "run_id": saved["run_id"], "created_run": bool(saved.get("created_run"))}
    return {**spec, "find_run": True} if adopted else spec


def _mlflow_opened(sink: Any) -> Spec:
    return {"tracking_uri": sink.tracking_uri, "run_id": sink.run_id, "created_run": bool(sink.created_run)}


def _mlflow_check(config: Any) -> None:
    from spherewatch.sinks.mlflow_run import check_tracking_uri

    check_tracking_uri(config.tracking_uri)


# ----------------------------------------------------------------------------------------------------- wandb, trackio
def _wandb(spec: Mapping[str, Any]) -> Any:
    from spherewatch.sinks.wandb import WandbSink

    return WandbSink(project=spec.get("project"), run_name=spec.get("run_name"), prefix=spec.get("prefix", "spherewatch"),
                     alerts=bool(spec.get("alerts")), run_id=spec.get("run_id"))


def _wandb_spec(config: Any, run_key: str) -> Spec:
    """The host's active run is found when the sink opens (``wandb.run`` is process-wide); else a run of its own in
    the project ``experiment_name``."""
    return {"project": config.experiment_name, "run_name": config.run_name, "prefix": config.prefix,
            "alerts": "wandb" in (getattr(config, "alert_channels", None) or ())}


def _trackio(spec: Mapping[str, Any]) -> Any:
    from spherewatch.sinks.trackio import TrackioSink

    return TrackioSink(project=spec.get("project"), run_name=spec.get("run_name"), prefix=spec.get("prefix", "spherewatch"),
                       alerts=bool(spec.get("alerts")), host_token=spec.get("host_token"))


def _trackio_spec(config: Any, run_key: str) -> Spec:
    """trackio's current run is per thread: the host's is looked up here, on the training thread."""
    from spherewatch.sinks.trackio import host_run_token

    return {"project": config.experiment_name, "run_name": config.run_name, "prefix": config.prefix,
            "alerts": "trackio" in (getattr(config, "alert_channels", None) or ()), "host_token": host_run_token()}


# ------------------------------------------------------------------------------------------------------ jsonl, memory
def _jsonl(spec: Mapping[str, Any]) -> Any:
    from spherewatch.sinks.jsonl import JsonlSink

    return JsonlSink(spec["path"])


def _memory(spec: Mapping[str, Any]) -> Any:
    from spherewatch.sinks.memory import MemorySink

    return MemorySink()


SINKS: Dict[str, SinkEntry] = {e.name: e for e in (
    SinkEntry("tensorboard", _tensorboard, _tensorboard_spec, requires="tensorboard",
              install="TensorBoardSink needs `tensorboard`: pip install 'spherewatch[tensorboard]'.",
              text_fields=("log_dir",)),
    SinkEntry("mlflow", _mlflow, _mlflow_spec, requires="mlflow",
              install="MLflowSink needs `mlflow`: pip install 'spherewatch[mlflow]'.", check=_mlflow_check,
              local=False, resume=_mlflow_resume, opened=_mlflow_opened,
              text_fields=("tracking_uri", "run_id", "experiment_name", "run_name")),
    SinkEntry("wandb", _wandb, _wandb_spec, requires="wandb",
              install="WandbSink needs `wandb`: pip install 'spherewatch[wandb]'.", local=False,
              opened=lambda sink: {"run_id": sink.run_id}, text_fields=("experiment_name", "run_name")),
    SinkEntry("trackio", _trackio, _trackio_spec, requires="trackio",
              install="TrackioSink needs `trackio`: pip install 'spherewatch[trackio]'.", rebuildable=False,
              text_fields=("experiment_name", "run_name")),
    SinkEntry("jsonl", _jsonl, lambda config, run_key: {"path": os.path.abspath(config.resolved_jsonl_path)},
              text_fields=("log_dir", "jsonl_path")),
    SinkEntry("memory", _memory, lambda config, run_key: {}, rebuildable=False),
)}
#: The sink names, in the order the registry lists them.
SINK_NAMES: Tuple[str, ...] = tuple(SINKS)


def sink_entry(name: str) -> SinkEntry:
    """The registry entry of ``name``.

    Raises:
        ValueError: an unknown name, with the known ones.
    """
    try:
        return SINKS[name]
    except KeyError:
        raise ValueError(f"Unknown sink {name!r}; use one of: {', '.join(SINK_NAMES)}.") from None


def check_sink_names(names: Sequence[str], tracking_uri: Optional[str] = None, config: Any = None) -> None:
    """Validate the configured sinks without opening anything (no file, no network): a missing extra or a tracking
    URI MLflow cannot use fails here, at construction, with the fix.

    Raises:
        ModuleNotFoundError: ``tensorboard`` or ``mlflow`` is configured but not installed.
        ValueError: an unknown sink name, or a tracking URI with an unknown scheme.
    """
    for name in names:
        entry = sink_entry(name)
        entry.available()
        if entry.check is not None:
            entry.check(config if config is not None else _UriOnly(tracking_uri))


class _UriOnly:
    """A configuration that only says its tracking URI (for :func:`check_sink_names` called without one)."""

    def __init__(self, tracking_uri: Optional[str]) -> None:
        self.tracking_uri = tracking_uri


def sink_spec(name: str, config: Any, run_key: str) -> Spec:
    """``{"name": name, **what the sink is}`` for this configuration and run."""
    return {"name": name, **sink_entry(name).spec(config, run_key)}


def build_sink(spec: Mapping[str, Any]) -> Any:
    """Open the sink ``spec`` describes (on the writer thread; may do file or network I/O and raise)."""
    return sink_entry(spec["name"]).build(spec)
