"""Measurement helpers shared by the benchmark scripts (peak memory from /proc/self/status and /proc/self/clear_refs,
best-of-runs time)."""
from __future__ import annotations

import time
from typing import Any, Callable, Tuple


def rss_kb(field: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process, in kB; 0 when /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) to the current RSS; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_mb(base_kb: int, can_reset: bool) -> float:
    """Peak RSS since :func:`reset_peak` minus ``base_kb``, in MB (NaN when the counter could not be reset)."""
    return (rss_kb("VmHWM") - base_kb) / 1024 if can_reset else float("nan")


def measure(fn: Callable[[], Any], repeats: int, slow_s: float = 5.0) -> Tuple[Any, float, float]:
    """Run ``fn`` once measuring its peak extra RSS, then ``repeats`` more times unless the first call took longer
    than ``slow_s``. Returns ``(first result, best time in s, peak extra MB >= 0)``."""
    base = rss_kb("VmRSS")
    can_reset = reset_peak()
    t0 = time.perf_counter()
    out = fn()
    times = [time.perf_counter() - t0]
    peak_mb = peak_extra_mb(base, can_reset)
    if times[0] < slow_s:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return out, min(times), max(peak_mb, 0.0)
