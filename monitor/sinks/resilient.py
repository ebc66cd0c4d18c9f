"""The retrying sink wrapper, kept importable here: it lives in :mod:`spherewatch.delivery.retry`."""
from spherewatch.delivery.retry import ResilientSink

__all__ = ["ResilientSink"]
