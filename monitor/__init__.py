"""spherewatch: watch the geometry of embeddings while a model trains, and alert when they collapse.

``spherewatch.Monitor`` samples embedding batches on a schedule, computes the metrics of ``spherewatch.metrics``
on the training device (one read-back per evaluation step) and sends them to the sinks and the alert rules.
``spherewatch.metrics`` holds the metrics as plain functions; its docstring says which normalise rows, what
shapes they return and which synchronise with the host (the eigen-decomposition ones, once per decomposition).

>>> import spherewatch as sw
>>> mon = sw.Monitor(every_n_steps=10, sinks=("memory",), warn=False)
"""
from spherewatch import metrics
from spherewatch._version import __version__
from spherewatch.alerts.alert import Alert
from spherewatch.config import MonitorConfig, load_config
from spherewatch.errors import CollapseWarning, MonitorFault, SpherewatchError
from spherewatch.monitor import Monitor

__all__ = [
    "__version__",
    "metrics",
    "Monitor",
    "MonitorConfig",
    "load_config",
    "Alert",
    "CollapseWarning",
    "MonitorFault",
    "SpherewatchError",
]
