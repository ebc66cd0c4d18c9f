"""Thin adapters that attach :class:`spherewatch.Monitor` to host training loops.

Each adapter module imports its framework at top level; only users of that framework import it.
"""
