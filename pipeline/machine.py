"""What this process may use of the machine: its cores.

Every pool this package sizes by itself (TFLite's threads, decode threads or processes, folds run at
once, a served model's threads) asks :func:`usable_cores`: the CPUs of the process's affinity mask,
which ``taskset``, Slurm's CPU binding and a container's cpuset narrow, rather than every CPU of the
machine (``os.cpu_count``), which would put several threads on each core it may use.
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask); every CPU where the platform has no mask."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1
