"""Recycling a worker process: past FARM_WORKER_MAX_RSS_MB of resident memory (a leak) or
FARM_WORKER_MAX_JOBS jobs, it drains (takes no more jobs, finishes those it runs) and exits
0, for its supervisor (`farm supervise`, Kubernetes) to start a fresh one. ``due`` is the
pure decision; ``rss_mb`` reads the process's resident memory."""

from __future__ import annotations

import os
import resource


def due(rss_mb: float | None, jobs_done: int, *, max_rss_mb: int, max_jobs: int) -> str | None:
    """Why the process must be recycled now, or None. A limit of 0 is off."""
    if max_rss_mb and rss_mb is not None and rss_mb > max_rss_mb:
        return (f"resident memory {rss_mb:.0f} MB is above FARM_WORKER_MAX_RSS_MB "
                f"({max_rss_mb})")
    if max_jobs and jobs_done >= max_jobs:
        return f"{jobs_done} jobs done, FARM_WORKER_MAX_JOBS is {max_jobs}"
    return None


def rss_mb() -> float | None:
    """This process's resident memory now, MB (Linux: /proc/self/statm); elsewhere its peak
    (getrusage), and None if neither can be read."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (OSError, ValueError):
        return None
