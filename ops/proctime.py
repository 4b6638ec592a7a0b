"""CPU time of the processes a bench run involves, from /proc (the cpu scenario's figures).

CPU seconds per job, from /proc/<pid>/stat (utime+stime, cutime+cstime), the difference of
two samples taken just before the first submit and once the last job is seen finished, of:
  * worker: the Celery worker process (with all its threads); "worker sys" is the part of
    it spent in the kernel (its stime: system calls, and the interpreter lock handed from
    thread to thread through futex waits and wakes), already counted in "worker";
  * postgres: the whole embedded server, the postmaster's process tree: every process's own
    times plus its reaped children's (cutime+cstime), summed over the postmaster and all its
    live descendants. A backend that lives through both samples counts by its own times; one
    that exits in between moves its whole lifetime into the postmaster's cutime, and was
    counted live in the first sample, so the difference is exactly its time in the window
    (likewise one forked and gone in between). pg_stat_activity would miss the auxiliary
    processes (walwriter, checkpointer, autovacuum) and the short-lived ones. The only error
    is a backend exiting between the reads of one sample, rare at the two idle moments
    sampled;
  * redis: the Valkey/Redis server's process tree the same way (a BGSAVE fork included);
  * sim: the simulator's process tree (shared by both variants, measured per run);
  * submitter: this process's CPU (time.process_time) while it submits the N jobs: for the
    farm validating, routing, recording and publishing; for plain Celery publishing.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from farm.services import read_endpoints
from farm.settings import Settings

KERNEL = "worker sys"  # of the worker's CPU, the part in the kernel (its stime)
TICK = os.sysconf("SC_CLK_TCK")


def _all_stats() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, ticks: own utime+stime plus reaped children's cutime+cstime, own stime
    ticks)."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:  # gone meanwhile
            continue
        f = raw.rsplit(b")", 1)[1].split()  # after "pid (comm)": state ppid … (man 5 proc)
        stats[int(entry.name)] = (int(f[1]), sum(int(x) for x in f[11:15]), int(f[12]))
    return stats


def worker_cpu(worker: int, roots: dict[str, int | None]) -> dict[str, float | None]:
    """tree_cpu of the worker and the servers, and the worker's own system time (its
    stime: its threads' time in the kernel), from one read of /proc."""
    stats = _all_stats()
    kernel = stats[worker][2] / TICK if worker in stats else None
    return {**tree_cpu({"worker": worker, **roots}, stats), KERNEL: kernel}


def tree_cpu(roots: dict[str, int | None], stats: dict[int, tuple[int, int, int]] | None = None
             ) -> dict[str, float | None]:
    """CPU seconds so far of each named process tree (see the module docstring); ``stats``:
    a read of /proc already made (_all_stats)."""
    stats = _all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float | None] = {}
    for name, root in roots.items():
        if root is None or root not in stats:
            out[name] = None
            continue
        ticks, stack = 0, [root]
        while stack:
            pid = stack.pop()
            ticks += stats[pid][1]
            stack.extend(children.get(pid, ()))
        out[name] = ticks / TICK
    return out


def _pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _server(url: str) -> tuple[str | None, int | None]:
    parsed = urlsplit(url)
    return parsed.hostname, parsed.port


def server_pids(settings: Settings) -> dict[str, int | None]:
    """The embedded Postgres's postmaster and the embedded Valkey, unless the settings' URLs
    name other servers (a database of the embedded server, the bench's own, is embedded)."""
    data = settings.data_dir
    embedded = read_endpoints(data)

    def ours(url: str | None, embedded_url: str | None) -> bool:
        return url is None or (embedded_url is not None
                               and _server(url) == _server(embedded_url))

    return {"postgres": _pid_file(data / "postgres" / "postmaster.pid") if ours(
                settings.database_url, embedded and embedded.database_url) else None,
            "redis": _pid_file(data / "valkey" / "valkey.pid") if ours(
                settings.broker_url, embedded and embedded.broker_url) else None}
