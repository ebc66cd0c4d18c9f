"""Opening a sink without stalling training: yield the GIL to the training thread between the modules it imports.

Opening an MLflow sink imports ``mlflow`` (hundreds of modules) and sets up its store (SQLAlchemy, migrations):
seconds of Python work on the writer's side. Python hands the GIL over only every ``sys.getswitchinterval()``
(5 ms), so a training step made of many short torch calls, each giving the GIL up and waiting for it again, took
0.5-1.6 s while that ran. :func:`yielding` installs, for the opening only, an import hook that calls ``pause``
before each module the opening thread imports (the writer's pause: it sleeps while the training thread is in an
evaluation), and a shorter switch interval, so that the training thread gets the GIL back within a fraction of a
millisecond. Other threads' imports are not affected (the hook only acts on the thread that installed it).

Example:
    >>> calls = []
    >>> with yielding(lambda: calls.append(1)):
    ...     import colorsys  # a module not imported yet (or already: then no call)
    >>> import sys; _YieldingFinder not in [type(f) for f in sys.meta_path]
    True
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

__all__ = ["SWITCH_INTERVAL", "yielding"]

#: The switch interval while a sink opens (seconds; Python's default is 0.005).
SWITCH_INTERVAL = 0.0001
#: A sleep before each module the opening thread imports (seconds): the training thread runs meanwhile.
IMPORT_GAP = 0.001
#: The longest stretch of Python work the opening thread does before it yields again (seconds).
SLICE = 0.002
_lock = threading.Lock()
_active = [0]
_saved_interval = [0.005]


class _YieldingFinder:
    """A ``sys.meta_path`` entry that finds nothing: it calls ``pause`` when its thread imports a module."""

    def __init__(self, pause: Callable[[], None]) -> None:
        self.pause, self.thread = pause, threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if threading.get_ident() == self.thread:
            try:
                self.pause()
            except Exception:  # noqa: BLE001 - an import never fails because of the hook
                pass
            time.sleep(IMPORT_GAP)
        return None

    def invalidate_caches(self) -> None:
        pass


@contextlib.contextmanager
def yielding(pause: Optional[Callable[[], None]]) -> Iterator[None]:
    """Within the block, the calling thread calls ``pause`` before each module it imports, and Python switches
    threads every :data:`SWITCH_INTERVAL` seconds (restored when the last such block ends). ``None``: no effect."""
    if pause is None:
        yield
        return
    finder = _YieldingFinder(pause)
    last = [time.perf_counter()]

    def profile(frame: Any, event: str, arg: Any) -> None:  # this thread only: every Python call and return
        now = time.perf_counter()
        if now - last[0] >= SLICE:
            sys.setprofile(None)  # the pause's own calls are not profiled
            try:
                pause()
                time.sleep(IMPORT_GAP)
            except Exception:  # noqa: BLE001
                pass
            finally:
                last[0] = time.perf_counter()
                sys.setprofile(profile)

    previous = sys.getprofile()
    with _lock:
        if _active[0] == 0:
            _saved_interval[0] = sys.getswitchinterval()
            sys.setswitchinterval(min(SWITCH_INTERVAL, _saved_interval[0]))
        _active[0] += 1
        sys.meta_path.insert(0, finder)
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)
        with _lock:
            try:
                sys.meta_path.remove(finder)
            except ValueError:
                pass
            _active[0] -= 1
            if _active[0] == 0:
                sys.setswitchinterval(_saved_interval[0])
