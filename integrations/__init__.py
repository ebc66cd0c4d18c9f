"""Thin adapters that attach :class:`spherewatch.Monitor` to host training loops.

Each adapter module imports its framework at top level; only users of that framework import it. They share one
framework-free core, :class:`~spherewatch.integrations._core.AdapterCore` (config, sinks, the Monitor's life,
checkpoint state, close, stop), and only pull data out of their host.
"""
