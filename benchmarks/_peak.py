"""Peak-memory helpers shared by the benchmark scripts (Linux: /proc/self/status and /proc/self/clear_refs)."""
from __future__ import annotations


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
