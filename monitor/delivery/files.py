"""Files the delivery package writes: folders and files never world-writable, every byte written, atomic JSON.

Shared by the spool (:mod:`spherewatch.delivery.spool`) and the JSONL sink (:mod:`spherewatch.sinks.jsonl`).

Example:
    >>> import os, tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "a", "b")
    >>> make_private_dirs(folder)
    >>> write_json_private(os.path.join(folder, "run.json"), {"run_key": "x"})
    >>> read_json(os.path.join(folder, "run.json"))
    {'run_key': 'x'}
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

__all__ = ["make_private_dirs", "open_private_append", "read_json", "write_all", "write_json_private"]


def make_private_dirs(folder: str) -> None:
    """Create ``folder`` and its missing parents with mode ``0o755`` (reduced by the umask, never world-writable)."""
    missing = []
    folder = os.path.abspath(folder)
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for name in reversed(missing):  # os.makedirs applies `mode` to the leaf only
        try:
            os.mkdir(name, 0o755)
        except FileExistsError:
            pass


def open_private_append(path: str) -> int:
    """Open ``path`` for appending (creating it and its parent folders) without world-write permission.

    Files are created with mode ``0o644`` and folders with ``0o755`` (both further reduced by the umask);
    an existing file keeps its permissions. Returns a raw file descriptor.
    """
    make_private_dirs(os.path.dirname(os.path.abspath(path)))
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_json(path: str) -> Dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json_private(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (``<path>.tmp`` then rename), mode ``0o600``: it may hold a
    tracking URI with credentials."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, json.dumps(data).encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)

