"""Whether another run's spool folder, found on disk, may be replayed: nothing found on disk is trusted by default.

A folder under the spool root (e.g. shipped inside a cloned repository or an unpacked archive) is replayed only when

* it and every file in it were made by this user (owner uid), are not group- or world-writable, are plain files and
  folders (no symlink, no device), named as the monitor names them, and resolve inside the spool root;
* its ``run.json`` is the monitor's own (``{"run_key": <the folder's name>, "sinks": [...]}``);
* every sink it names is a destination this run is itself configured to write to: the same sink kind, and the same
  destination once normalised (``realpath`` of a file or folder, a tracking URI without its credentials, scheme and
  host lower-cased, the default port filled in). A local file or folder inside this run's own log folder or the
  spool root counts as this run's too (the monitor's own output); a path anywhere else is refused.

A replayed MLflow sink uses this run's own tracking URI (its credentials are this run's, for this run's server):
no URI, user name or password is ever taken from disk, so none is sent to a destination a folder names. A folder
that fails a check is left untouched (not locked, not read further) and named once in a warning.

Example:
    >>> normalize_uri("HTTP://bob:secret@LocalHost/")
    'http://localhost:80'
    >>> normalize_uri("http://127.0.0.1:5000/mlflow/") == normalize_uri("http://127.0.0.1:5000/mlflow")
    True
    >>> inside("/tmp/a/b.jsonl", ["/tmp/a"]), inside("/tmp/a/../c", ["/tmp/a"])
    (True, False)
"""
from __future__ import annotations

import logging
import os
import re
import stat
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from spherewatch.delivery.files import read_json
from spherewatch.sinks.mlflow_run import DEFAULT_TRACKING_URI

__all__ = ["check_folder", "inside", "normalize_uri", "refuse_once", "trusted_specs"]

logger = logging.getLogger("spherewatch.writer")

_OWN_NAME = re.compile(r"^(run\.json|\.lock|[A-Za-z0-9_.-]+\.spool\.jsonl(\.tmp)?|queue-[A-Za-z0-9_.-]+\.done"
                       r"|run\.json\.tmp|[A-Za-z0-9_.-]+\.done\.tmp)$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_reported: set = set()
_reported_lock = threading.Lock()


def inside(path: str, roots: Sequence[str]) -> bool:
    """True when ``path`` resolves (``realpath``: symlinks followed) inside one of ``roots`` (resolved too)."""
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        try:
            if os.path.commonpath([real, base]) == base:
                return True
        except ValueError:  # different drives
            continue
    return False


def normalize_uri(uri: Optional[str]) -> Optional[str]:
    """A tracking URI as a destination: credentials dropped, scheme and host lower-cased, default port filled in, a
    trailing slash dropped; a file or SQLite store by its resolved path. ``None`` stays ``None``."""
    if uri is None:
        return None
    uri = str(uri).strip()
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        try:
            port = parts.port
        except ValueError:
            port = None
        port = port or (443 if scheme == "https" else 80)
        return f"{scheme}://{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}"
    if scheme in ("", "file") or len(scheme) == 1:  # a path (a Windows drive letter is no scheme)
        path = parts.path if scheme == "file" else uri
        return "file:" + os.path.realpath(path)
    if scheme.startswith("sqlite"):
        path = uri.split(":///", 1)[1] if ":///" in uri else parts.path  # sqlite:////abs -> /abs
        return f"{scheme}:" + os.path.realpath(path.split("?", 1)[0])
    netloc = parts.netloc.rsplit("@", 1)[-1].lower()
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def check_folder(path: str, root: str) -> Optional[str]:
    """Why the run folder ``path`` under the spool root ``root`` is not the monitor's own (``None``: it is)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot read it ({exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is a symlink or not a folder"
    if not inside(path, [root]):
        return "it resolves outside the spool folder"
    why = _mode_problem(st, uid)
    if why:
        return f"the folder {why}"
    try:
        names = os.listdir(path)
    except OSError as exc:
        return f"cannot list it ({exc})"
    for name in names:
        if not _OWN_NAME.match(name):
            return f"it holds {name!r}, not a file the monitor writes"
        try:
            fst = os.lstat(os.path.join(path, name))
        except OSError as exc:
            return f"cannot read {name} ({exc})"
        if not stat.S_ISREG(fst.st_mode):
            return f"{name} is a symlink or not a plain file"
        why = _mode_problem(fst, uid)
        if why:
            return f"{name} {why}"
    data = read_json(os.path.join(path, "run.json"))
    if data.get("run_key") != os.path.basename(path) or not isinstance(data.get("sinks"), list):
        return "its run.json is not one the monitor wrote for this folder"
    return None


def _mode_problem(st: os.stat_result, uid: Optional[int]) -> Optional[str]:
    if uid is not None and st.st_uid != uid:
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by the group or others"
    return None


def trusted_specs(saved: Sequence[Any], own: Sequence[Mapping[str, Any]], dirs: Sequence[str],
                  rebuildable: Any) -> Tuple[Optional[List[Dict[str, Any]]], str]:
    """The specs to replay a folder's sinks with, or ``(None, why)`` when one names a destination that is not this
    run's.

    Args:
        saved: the sink specs of the folder's ``run.json``.
        own: this run's sink specs.
        dirs: folders whose files count as this run's (its log folder, the spool root).
        rebuildable: ``rebuildable(name)``: whether a sink of that name can be opened again from its spec.

    A sink that cannot be rebuilt (memory, a host's object) becomes ``{"name": None}`` (replayed into nothing).
    """
    out: List[Dict[str, Any]] = []
    for spec in saved:
        if not isinstance(spec, dict):
            return None, "its run.json names a sink that is not a mapping"
        name = spec.get("name")
        if spec.get("object") or not isinstance(name, str) or not rebuildable(name):
            out.append({"name": None})
            continue
        mine = [s for s in own if s.get("name") == name and not s.get("object")]
        if name == "mlflow":
            ok, why = _mlflow_spec(spec, mine)
        elif name in ("jsonl", "tensorboard"):
            ok, why = _file_spec(spec, "path" if name == "jsonl" else "log_dir", mine, dirs)
        else:
            ok, why = None, f"its {name} sink is not one this run can check"
        if ok is None:
            return None, why
        out.append(ok)
    return out, ""


def _file_spec(spec: Mapping[str, Any], field: str, mine: Sequence[Mapping[str, Any]],
               dirs: Sequence[str]) -> Tuple[Optional[Dict[str, Any]], str]:
    path = spec.get(field)
    if not isinstance(path, str) or not path or "\x00" in path:
        return None, f"its {spec['name']} sink names no valid {field}"
    real = os.path.realpath(path)
    own = {os.path.realpath(s[field]) for s in mine if isinstance(s.get(field), str)}
    if real not in own and not inside(path, dirs):
        return None, f"its {spec['name']} sink writes to {path}, which is not this run's"
    out = {"name": spec["name"], field: real}
    if isinstance(spec.get("prefix"), str):
        out["prefix"] = spec["prefix"]
    return out, ""


def _mlflow_spec(spec: Mapping[str, Any], mine: Sequence[Mapping[str, Any]]) -> Tuple[Optional[Dict[str, Any]], str]:
    theirs = spec.get("tracking_uri")
    target = normalize_uri(theirs) if isinstance(theirs, str) else None
    for own in mine:
        uri = own.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        if target is not None and normalize_uri(uri) == target:
            break
    else:
        return None, f"its mlflow sink logs to {normalize_uri(theirs) if isinstance(theirs, str) else theirs!r}, " \
                     "which is not this run's tracking server"
    run_id = spec.get("run_id")
    if run_id is not None and not (isinstance(run_id, str) and _RUN_ID.match(run_id)):
        return None, "its mlflow run id is not an id"
    out: Dict[str, Any] = {"name": "mlflow", "tracking_uri": uri, "run_id": run_id,
                           "created_run": bool(spec.get("created_run"))}  # this run's URI: its credentials
    for field in ("experiment_name", "run_name", "prefix", "run_key"):
        if isinstance(spec.get(field), str):
            out[field] = spec[field]
    return out, ""


def refuse_once(path: str, why: str) -> None:
    """Warn, once per process and folder, that ``path`` is left untouched."""
    with _reported_lock:
        if path in _reported:
            return
        _reported.add(path)
    logger.warning("spherewatch: the spool folder %s is not replayed and left untouched: %s. Replay only trusts "
                   "folders this user's monitor wrote for a destination this run writes to; remove the folder, or "
                   "run with the sinks it names, to deliver it.", path, why)
