"""The spool: records on disk that no sink has taken yet, in one format (:mod:`spherewatch.delivery.record`).

Folder layout (``<spool_dir>/<run_key>/``, one folder per Monitor run, locked by the process that owns it)::

    run.json                      what each sink is (name, log_dir / path / tracking URI, MLflow run id)
    <sink>-<i>.spool.jsonl        records sink i could not take yet (a :class:`SinkSpool`, one record per call)
    queue-<gen>.spool.jsonl       evaluations that overflowed the writer's queue, or were left at close (:class:`Overflow`)
    queue-<gen>.done              sequence number of the last evaluation of that file handed to the sinks

A line is ``record.encode(...)``; a spool written by spherewatch 0.1 (lines without ``"v"``) is read the same way.
A file holding a line of a newer format is refused: left in place, named in an error log line, never rewritten.

Example:
    >>> import os, tempfile
    >>> from spherewatch.delivery.record import Scalars, encode
    >>> spool = SinkSpool(os.path.join(tempfile.mkdtemp(), "run", "jsonl-0.spool.jsonl"))
    >>> spool.append(encode(Scalars(1, 0.0, {"a": 1.0})))
    >>> [rec.step for rec, _ in spool.load().records]
    [1]
    >>> spool.rewrite([]); os.path.exists(spool.path)
    False
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from spherewatch.delivery.files import (
    make_private_dirs,
    open_private_append,
    read_json,
    write_all,
    write_json_private,
)
from spherewatch.delivery.record import Evaluation, NewerFormatError, Record, decode, encode

__all__ = ["Overflow", "RunFolder", "SinkSpool", "load_queue_file", "lock_folder", "mark_done", "other_runs",
           "remove_queue_file", "unlock_folder"]

logger = logging.getLogger("spherewatch.writer")

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
QUEUE_PREFIX = "queue-"
SPOOL_SUFFIX = ".spool.jsonl"


# ------------------------------------------------------------------------------------------------- one sink's file
@dataclasses.dataclass
class Loaded:
    """What :meth:`SinkSpool.load` read: ``(record, line)`` pairs, malformed lines skipped, whether it ended clean."""

    records: List[Tuple[Record, bytes]]
    bad: int = 0
    clean_end: bool = True


class SinkSpool:
    """One sink's backlog on disk: appended as it grows, rewritten (atomically) as it shrinks, removed when empty."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        self._fd: Optional[int] = None

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def append(self, line: bytes) -> None:
        """Append one encoded record (raises ``OSError`` when the disk refuses it)."""
        if self._fd is None:
            self._fd = open_private_append(self.path)
        write_all(self._fd, line)

    def rewrite(self, lines: Iterable[bytes]) -> None:
        """Make the file hold exactly ``lines`` (atomically), or remove it when there are none."""
        self.close()
        lines = list(lines)
        if not lines:
            if os.path.exists(self.path):
                os.remove(self.path)
            return
        tmp = self.path + ".tmp"
        make_private_dirs(os.path.dirname(os.path.abspath(self.path)))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for line in lines:
                write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def discard(self) -> None:
        """Remove the file (and its temporary): it no longer follows the backlog."""
        self.close()
        for path in (self.path, f"{self.path}.tmp"):
            try:
                os.remove(path)
            except OSError:
                pass

    def load(self) -> Loaded:
        """Read the records of the file.

        Raises:
            NewerFormatError: a line was written by a newer spherewatch (the file is left as it is).
        """
        out = Loaded([])
        with open(self.path, "rb") as f:
            for raw in f:
                out.clean_end = raw.endswith(b"\n")
                if not raw.strip():
                    continue
                try:
                    record = decode(raw)
                except NewerFormatError as err:
                    raise NewerFormatError(f"{self.path}: {err}") from None
                except (ValueError, KeyError, TypeError, AttributeError):
                    out.bad += 1
                    continue
                out.records.append((record, raw if out.clean_end else raw + b"\n"))
        return out


# ------------------------------------------------------------------------------------------------------- run folder
def lock_folder(folder: str) -> Optional[int]:
    """Take ``folder``'s lock (non-blocking), creating the folder. Returns its fd, or None when another live process
    holds it."""
    make_private_dirs(folder)
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock; one process per spool folder
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def unlock_folder(fd: Optional[int]) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class RunFolder:
    """One run's spool folder: its identity (``run.json``), its sinks' spool files and its overflow files."""

    def __init__(self, root: str, run_key: str) -> None:
        self.root, self.run_key = os.path.abspath(root), run_key
        self.lock_fd: Optional[int] = None
        self._made_root = False  # this run created the spool root: it removes it again when it is left empty

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.run_key)

    def lock(self) -> bool:
        """Take the lock; False when a live process holds it (raises ``OSError`` when the folder cannot be made)."""
        self._made_root = self._made_root or not os.path.isdir(self.root)
        self.lock_fd = lock_folder(self.path)
        return self.lock_fd is not None

    def release(self) -> bool:
        """Remove the folder when nothing is left in it, and drop the lock. True when the folder was removed."""
        removed = False
        if self.lock_fd is not None:
            removed = self.remove_if_empty()
            unlock_folder(self.lock_fd)
            self.lock_fd = None
        return removed

    def disown(self) -> None:
        """In a forked child: close the inherited lock descriptor (the parent's lock stays held by the parent)."""
        unlock_folder(self.lock_fd)
        self.lock_fd = None

    def let_go(self) -> None:
        """Drop the lock, keeping the folder: the next run delivers what is in it."""
        unlock_folder(self.lock_fd)
        self.lock_fd = None

    def read_sinks(self) -> List[Any]:
        """The sink specs ``run.json`` holds (``[]`` when none)."""
        sinks = read_json(os.path.join(self.path, RUN_FILE)).get("sinks", [])
        return sinks if isinstance(sinks, list) else []

    def write_sinks(self, specs: Sequence[Dict[str, Any]]) -> None:
        try:
            make_private_dirs(self.path)
            write_json_private(os.path.join(self.path, RUN_FILE), {"run_key": self.run_key, "sinks": list(specs)})
        except OSError:
            logger.debug("spherewatch: cannot write %s.", os.path.join(self.path, RUN_FILE), exc_info=True)

    def sink_spool(self, name: str, index: int) -> str:
        return os.path.join(self.path, f"{name}-{index}{SPOOL_SUFFIX}")

    def queue_files(self, exclude: Optional[str] = None) -> List[str]:
        try:
            names = os.listdir(self.path)
        except OSError:
            return []
        return sorted(os.path.join(self.path, n) for n in names if n.startswith(QUEUE_PREFIX)
                      and n.endswith(SPOOL_SUFFIX) and (exclude is None or exclude not in n))

    def foreign_spools(self, known: Sequence[str]) -> List[str]:
        """Names of sink spool files not in ``known`` (paths): records of sink objects only their own run rebuilds."""
        try:
            names = os.listdir(self.path)
        except OSError:
            return []
        return [n for n in names if n.endswith(SPOOL_SUFFIX) and not n.startswith(QUEUE_PREFIX)
                and os.path.join(self.path, n) not in known]

    def remove_if_empty(self) -> bool:
        try:
            left = [n for n in os.listdir(self.path) if n not in (LOCK_FILE, RUN_FILE)]
        except OSError:
            return False
        if left:
            return False
        for n in (RUN_FILE, LOCK_FILE):
            try:
                os.remove(os.path.join(self.path, n))
            except OSError:
                pass
        try:
            os.rmdir(self.path)
        except OSError:
            return False
        if self._made_root:  # no empty `spool/` left in the log dir (another run's folder in it keeps it)
            try:
                os.rmdir(self.root)
            except OSError:
                pass
        return True

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"


def other_runs(root: str, own_key: str) -> Iterator[RunFolder]:
    """The run folders under ``root`` other than ``own_key``'s that hold a ``run.json``."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return
    for name in names:
        folder = RunFolder(root, name)
        if name != own_key and os.path.isdir(folder.path) and os.path.exists(os.path.join(folder.path, RUN_FILE)):
            yield folder


# ------------------------------------------------------------------------------------------------- queue overflow
def load_queue_file(path: str) -> Optional[List[Evaluation]]:
    """The evaluations of an overflow file not yet handed over (after its ``.done`` mark), in order, each once (the
    in-flight copy, restricted to the sinks that lacked it, wins). A file of a newer format is refused: ``None``,
    and an error naming its folder."""
    done = -1
    try:
        with open(_done_path(path), "r") as f:
            done = int(f.read().strip() or -1)
    except (OSError, ValueError):
        pass
    by_seq: Dict[int, Evaluation] = {}
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    rec = decode(raw)
                except NewerFormatError as err:
                    logger.error("spherewatch: the spool folder %s holds %s, written by a newer spherewatch (%s); it "
                                 "is left in place: deliver it with that version.", os.path.dirname(path),
                                 os.path.basename(path), err)
                    return None
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a line cut by a crash
                if not isinstance(rec, Evaluation) or rec.seq <= done:
                    continue
                if rec.seq not in by_seq or rec.only is not None:
                    by_seq[rec.seq] = rec
    except OSError:
        pass
    return [by_seq[s] for s in sorted(by_seq)]


def mark_done(path: str, seq: int) -> None:
    try:
        write_json_private(_done_path(path), seq)
    except OSError:
        pass


def remove_queue_file(path: str) -> None:
    for p in (path, _done_path(path)):
        try:
            os.remove(p)
        except OSError:
            pass


def _done_path(path: str) -> str:
    return path[: -len(SPOOL_SUFFIX)] + ".done"


class Overflow:
    """This process's overflow file in a run folder: evaluations the in-memory queue had no room for.

    :meth:`spill` runs on the training thread (and on the closing one), :meth:`take` on the writer thread; both hold
    :attr:`lock`. ``on_start`` is called when a spill starts a new file (the writer is told to take it over later)."""

    def __init__(self, folder: RunFolder, on_start: Optional[Callable[[], None]] = None) -> None:
        self.folder, self._on_start = folder, on_start
        self.gen = f"{int(time.time() * 1000):013d}-{os.getpid()}-{os.urandom(3).hex()}"
        self.lock = threading.RLock()
        self.active = False  # records go to the file until the writer takes it over
        self._fd: Optional[int] = None
        self._warned = False

    @property
    def path(self) -> str:
        return os.path.join(self.folder.path, f"{QUEUE_PREFIX}{self.gen}{SPOOL_SUFFIX}")

    def spill(self, rec: Evaluation) -> bool:
        """Append ``rec``. False when the disk refuses it (it stays in memory then)."""
        with self.lock:
            try:
                if self._fd is None:
                    make_private_dirs(self.folder.path)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                write_all(self._fd, encode(rec))
            except (OSError, ValueError, TypeError) as exc:
                if not self._warned:
                    self._warned = True
                    logger.warning("spherewatch: the writer's queue is full and the spool folder %s is not writable "
                                   "(%s: %s); records are kept in memory meanwhile.", self.folder.path,
                                   type(exc).__name__, exc)
                return False
            if not self.active:
                self.active = True
                if self._on_start is not None:
                    self._on_start()
                logger.info("spherewatch: the sinks are slower than training; records overflow to %s until they "
                            "catch up.", self.path)
            return True

    def take(self) -> Optional[str]:
        """Close the file and rename it for replay (the next spill starts a new one); its new path, or None."""
        with self.lock:
            self.sync()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            taken = self.path[: -len(SPOOL_SUFFIX)] + f"-t{time.monotonic_ns()}{SPOOL_SUFFIX}"
            try:
                os.replace(self.path, taken)
            except OSError:
                taken = None
            self.active = False
        return taken

    def sync(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
