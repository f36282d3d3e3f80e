"""How many CPUs this process may really use: its affinity, capped by a cgroup CPU quota."""

from __future__ import annotations

import math
import os
from pathlib import Path

# cgroup v2's quota file for this process's group ("max 100000" when unlimited).
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_quota(cpu_max: Path = CPU_MAX) -> float | None:
    """CPUs' worth of time per period the cgroup allows (``None``: no quota, or no cgroup v2).

    A pod with a 2-CPU limit on a 64-core node sees 64 CPUs in its affinity and ``200000
    100000`` here.
    """
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus(cpu_max: Path = CPU_MAX) -> int:
    """The CPUs this process may run on, at most the quota rounded up (at least 1)."""
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota(cpu_max)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus
