"""How many threads torch uses on the CPU: half the cores this process may run on, unless the user chose.

torch starts one intra-op thread per core, and every op of a small model then waits for all of them. When other
processes share the cores (a laptop with a browser, a CI box, a machine shared with colleagues) one descheduled
thread stalls every op: the demo fell from 16 to 0.5 steps/s on 2 cores beside two busy processes, where one thread
kept 7.5 steps/s (benchmarks/results/2026-11-29-cpu-threads.md). Half the cores gives up some speed on an idle
machine (16.2 -> 11.6 steps/s there) for never falling off that cliff. ``OMP_NUM_THREADS`` (or MKL's) overrides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

USER_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


def choose_cpu_threads(cores: int, env: Mapping[str, str]) -> int | None:
    """Threads for a CPU run on ``cores`` cores; None where the environment already says (``OMP_NUM_THREADS``)."""
    if any(env.get(name) for name in USER_SETTINGS):
        return None
    return max(1, cores // 2)


def set_cpu_threads() -> str | None:
    """Apply ``choose_cpu_threads`` to torch; returns the line to log, None where the user chose."""
    cores = usable_cores()
    threads = choose_cpu_threads(cores, os.environ)
    if threads is None:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return (f"cpu threads: {threads} of {cores} cores (torch's default was {before}: with one thread per core, "
            "other processes on the cores stall every step); set OMP_NUM_THREADS to choose")
