"""Starting and stopping real `celery worker` processes for e2e and fault tests, and
observing what they did (their logs, the jobs and attempts tables)."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from farm.worker.command import wait_ready as ready
from farm.worker.command import worker_argv

API_KEY = "sk-test-e2e-secret-0123456789abcdef"


def start_worker(env: dict[str, str], log: Path, queues: str, concurrency: int = 20,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(worker_argv(queues, concurrency=concurrency, extra=extra),
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    ready(proc, log, timeout)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def running_workers(env: dict[str, str], specs: Sequence[tuple[Path, str, int]]
                    ) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Workers for (log, queues, concurrency) specs, all ready; stopped on the way out."""
    procs = [start_worker(env, log, queues, concurrency) for log, queues, concurrency in specs]
    try:
        for proc, (log, _, _) in zip(procs, specs, strict=True):
            wait_ready(log, proc)
        yield procs
    finally:
        stop_all(procs)


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """``stop`` for several at once: all are sent SIGTERM first, so that their warm
    shutdowns (about 1.5 s each) overlap."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def close_circuits(broker_url: str) -> None:
    """Every model's circuit closed, its failures forgotten (what `Breaker.reset` does): the
    failures an earlier test provoked do not open a breaker on this one's jobs and defer
    them by its cooldown (15 s, doubled after a failed probe)."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        keys = list(client.scan_iter("farm:breaker:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# --- observing what the workers did --------------------------------------------------
# A test that sleeps and then asserts that nothing happened passes when nothing was even
# tried: these helpers wait, with a deadline, for the condition itself to be observed.

TASK_LINE = re.compile(r"Task [\w.]+\[([0-9a-fA-F-]{36})\] (\S+)")


def log_text(*logs: Path) -> str:
    """What the logs hold so far, complete lines only (a line being written is left out)."""
    parts: list[str] = []
    for log in logs:
        content = log.read_text(errors="replace") if log.exists() else ""
        parts.append(content[: content.rfind("\n") + 1])
    return "".join(parts)


def in_flight(text: str) -> set[str]:
    """The task (job) ids a worker's log shows received and not finished: Celery logs one
    "received" line per delivery and one closing line for it (succeeded, retry, raised ...).
    A message held for a countdown (a retry, a deferral) counts too: received, not run."""
    open_deliveries: Counter[str] = Counter()
    for match in TASK_LINE.finditer(text):
        open_deliveries[match[1]] += 1 if match[2] == "received" else -1
    return {job for job, n in open_deliveries.items() if n > 0}


def ended(text: str, how: str) -> set[str]:
    """The task ids a worker's log shows a delivery of ended ``how``: "succeeded" (the job
    succeeded), "raised" (JobFailed: it failed or is dead), "ignored" (it was cancelled, or
    another delivery has it), "retry"."""
    return {m[1] for m in TASK_LINE.finditer(text) if m[2] == how}


def succeeded(text: str) -> set[str]:
    """The task ids a worker's log shows finished with "succeeded" (the task returned)."""
    return ended(text, "succeeded")


def wait_until(missing: Callable[[], str | None], timeout: float,
               interval: float = 0.2) -> None:
    """Poll until ``missing()`` returns None. It returns what has not been observed yet; after
    ``timeout`` seconds that is the AssertionError's message."""
    deadline = time.monotonic() + timeout
    while (gap := missing()) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"not observed within {timeout:.0f}s: {gap}")
        time.sleep(interval)


def lines_per_id(text: str, ids: Iterable[object], *fragments: str) -> dict[str, int]:
    """For each id, how many lines of ``text`` hold every fragment ("{id}" in a fragment
    stands for the id)."""
    lines = text.splitlines()
    counts: dict[str, int] = {}
    for job in map(str, ids):
        parts = [fragment.format(id=job) for fragment in fragments]
        counts[job] = sum(all(part in line for part in parts) for line in lines)
    return counts


def wait_for_each(logs: Sequence[Path], ids: Iterable[object], *fragments: str,
                  times: int = 1, timeout: float = 30) -> None:
    """Until, for each id, the logs hold at least ``times`` lines with every fragment."""
    wanted = [str(job) for job in ids]

    def missing() -> str | None:
        counts = lines_per_id(log_text(*logs), wanted, *fragments)
        short = {job: n for job, n in counts.items() if n < times}
        return (f"{len(short)} of {len(wanted)} job(s) logged fewer than {times} line(s) "
                f"with {' … '.join(fragments)!r} (id: lines seen): {short}") if short else None

    wait_until(missing, timeout)


def wait_for_text(logs: Sequence[Path], *texts: str, timeout: float = 30) -> None:
    """Until each text appears somewhere in the logs."""
    def missing() -> str | None:
        seen = log_text(*logs)
        absent = [t for t in texts if t not in seen]
        return f"not in {[log.name for log in logs]}: {absent}" if absent else None

    wait_until(missing, timeout)


def _uuids(ids: Iterable[object]) -> list[uuid.UUID]:
    return [uuid.UUID(str(job)) for job in ids]


def with_status(engine: Engine, ids: Iterable[object], status: str) -> set[str]:
    """Those of the jobs whose row has this status now."""
    with engine.connect() as conn:
        found = conn.execute(text("select id from jobs where id = any(:ids) and status = :s"),
                             {"ids": _uuids(ids), "s": status}).scalars()
        return {str(job) for job in found}


def attempt_rows(engine: Engine, ids: Iterable[object], outcome: str | None = None
                 ) -> dict[str, int]:
    """Attempt rows (provider calls) per job, of one outcome if given; jobs without any
    are left out."""
    sql = ("select job_id, count(*) from attempts where job_id = any(:ids)"
           + (" and outcome = :o" if outcome else "") + " group by job_id")
    with engine.connect() as conn:
        rows = conn.execute(text(sql), {"ids": _uuids(ids), "o": outcome}).all()
    return {str(job): int(n) for job, n in rows}


DEFERRED_LINE = re.compile(r"job ([0-9a-fA-F-]{36}) deferred [\d.]+s: (.*)$", re.MULTILINE)


def deferrals(text: str, reason: str) -> Counter[str]:
    """Per job id, how many times a worker's log shows it deferred (taken, then handed back
    to wait, no attempt used) for a reason containing ``reason``."""
    return Counter(m[1] for m in DEFERRED_LINE.finditer(text) if reason in m[2])


def calls_under_way(engine: Engine, log: Path, ids: Iterable[object]) -> set[str]:
    """Those of the jobs the worker writing ``log`` has taken and not finished (its log) and
    that are started (running, in Postgres): its calls under way, or about to be."""
    taken = in_flight(log_text(log)) & {str(job) for job in ids}
    return with_status(engine, taken, "running") if taken else set()


def wait_busy(engine: Engine, log: Path, ids: Iterable[object], at_least: int,
              timeout: float = 60) -> set[str]:
    """Until the worker writing ``log`` has at least ``at_least`` of the jobs under way
    (``calls_under_way``); returns them."""
    wanted = [str(job) for job in ids]
    busy: set[str] = set()

    def missing() -> str | None:
        busy.clear()
        busy.update(calls_under_way(engine, log, wanted))
        if len(busy) >= at_least:
            return None
        return f"{log.name}: {len(busy)} job(s) under way, {at_least} wanted"

    wait_until(missing, timeout, interval=0.1)
    return busy
