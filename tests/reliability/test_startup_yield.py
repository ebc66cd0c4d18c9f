"""Issue 22 row 9: opening a sink (``import mlflow``, the store's migrations) yields the GIL to the training thread.

Wall time is not asserted (benchmarks/stall.py ``--only startup`` prints it); the mechanism is: while a sink opens,
the opening thread calls the writer's pause before each module it imports and after each ~2 ms of Python work, and
the interpreter's switch interval is short; both are restored once it is open.
"""
from __future__ import annotations

import sys
import threading
import time

from spherewatch.delivery.sinkset import LazySink
from spherewatch.sinks import MemorySink


def test_a_sink_that_opens_yields_between_imports_and_python_work_and_restores_the_interpreter(tmp_path):
    (tmp_path / "sw_fresh_module_for_yield_test.py").write_text("X = sum(range(1000))\n")
    sys.path.insert(0, str(tmp_path))
    pauses, seen = [], {}

    def opener():
        seen["interval"] = sys.getswitchinterval()
        import sw_fresh_module_for_yield_test  # noqa: F401
        seen["after_import"] = len(pauses)
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:  # pure Python work, like a store's migrations
            sum(i * i for i in range(100))
        return MemorySink()

    interval, meta_path, profile = sys.getswitchinterval(), list(sys.meta_path), sys.getprofile()
    sink = LazySink("memory", opener, pause=lambda: pauses.append(threading.current_thread().name))
    try:
        opened = []
        thread = threading.Thread(target=lambda: opened.append(sink.open()), name="opening")
        thread.start()
        thread.join(30)
    finally:
        sys.path.remove(str(tmp_path))
    assert opened and isinstance(opened[0], MemorySink)
    assert seen["interval"] < interval  # a short switch interval while it opens
    assert seen["after_import"] >= 1  # paused before the module it imported
    assert len(pauses) >= 10 and set(pauses) == {"opening"}  # and every ~2 ms of its Python work, on its thread
    assert sys.getswitchinterval() == interval and sys.meta_path == meta_path and sys.getprofile() is profile
