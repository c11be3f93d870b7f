"""How long an instance's start took, phase by phase, for its `InstanceReady` (issue 15): process
start-up (measured from the kernel's record of when the process began, or from when a pre-started
worker was handed its spec), the weight load, and the rest of the engine's build."""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_age_s() -> float:
    """Seconds since this process began (Linux: /proc/self/stat's start time against the boot
    clock, to the kernel's tick); 0.0 where that is unavailable."""
    try:
        stat = Path("/proc/self/stat").read_text(encoding="ascii")
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
        now_s = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
    return max(0.0, now_s - start_ticks / os.sysconf("SC_CLK_TCK"))


def start_phases(startup_s: float, weights_s: float, build_s: float) -> dict[str, float]:
    """`InstanceReady.start_phases_s` from the start-up, the weight load and the whole build
    (which includes the load)."""
    return {
        "startup_s": startup_s,
        "weights_s": weights_s,
        "warmup_s": max(0.0, build_s - weights_s),
    }
