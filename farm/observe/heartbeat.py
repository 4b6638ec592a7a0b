"""The pool heartbeat of a worker process, in Redis, for the exporter, `farm top` and
`farm workers`.

Every ``EVERY_S`` seconds each worker process writes ``HSET farm:pool:<hostname>:<pid>``:
one field per queue it consumes, ``"<slots> <busy>"`` (its slots now, and the jobs of that
queue it is running), and ``metrics_port`` (the port of its /metrics, absent when they are
off); the key expires after ``TTL_S`` seconds, so a dead process drops out on its own, and a
clean shutdown deletes it.

Fields named ``@...`` describe the process itself (``META``; a worker's heartbeat, given
``info``, writes them): ``@host``, ``@pid``, ``@started_at`` and ``@beat_at`` (unix times,
the process's own clock), ``@rss_mb``, and those its ``info`` gives (the worker's
``@slots_min``, ``@slots_max``, ``@state``, ``@health_port``, ``@jobs_done``). ``parse``
skips them; ``read_all`` reads every live process as a ``WorkerBeat``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from farm.pool.recycle import rss_mb

log = logging.getLogger("farm.metrics")

PREFIX = "farm:pool:"
EVERY_S = 5.0
TTL_S = 30
METRICS_PORT = "metrics_port"
META = "@"  # the prefix of the fields about the process, not a queue
PROCESS_STARTED_AT = time.time()  # this module loads as the worker boots: its start, near enough


def key(hostname: str | None = None, pid: int | None = None) -> str:
    return f"{PREFIX}{hostname or socket.gethostname()}:{pid or os.getpid()}"


def fields(pool: Mapping[str, tuple[int, int]], metrics_port: int | None) -> dict[str, str]:
    """The hash's fields: ``queue -> "slots busy"``, and the metrics port if any."""
    found = {queue: f"{slots} {busy}" for queue, (slots, busy) in pool.items()}
    if metrics_port is not None:
        found[METRICS_PORT] = str(metrics_port)
    return found


def meta_fields(meta: Mapping[str, object]) -> dict[str, str]:
    """``name -> value`` as the hash's ``@name`` fields (a name given with its ``@`` keeps
    it); None values are left out."""
    return {(name if name.startswith(META) else META + name): str(value)
            for name, value in meta.items() if value is not None}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse(raw: Mapping[Any, Any]) -> tuple[dict[str, tuple[int, int]], int | None]:
    """A heartbeat's hash read back: (queue -> (slots, busy), metrics port or None); the
    ``@`` fields and a field that does not parse are left out (another writer's, or a newer
    farm's)."""
    pool: dict[str, tuple[int, int]] = {}
    port: int | None = None
    for name, value in raw.items():
        name, value = _text(name), _text(value)
        if name.startswith(META):
            continue
        try:
            if name == METRICS_PORT:
                port = int(value)
            else:
                slots, busy = value.split()
                pool[name] = (int(slots), int(busy))
        except ValueError:
            continue
    return pool, port


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class WorkerBeat:
    """One live worker process as its last heartbeat described it. Times are the process's
    own clock; ``beat_age_s`` comes from the key's expiry on Redis's clock, so neither
    depends on the reader's clock agreeing with the writer's. A figure the heartbeat did not
    carry (an older farm's, or a process without it) is None."""

    key: str
    host: str
    pid: int
    pool: dict[str, tuple[int, int]] = field(default_factory=dict)  # queue -> (slots, busy)
    metrics_port: int | None = None
    started_at: float | None = None
    beat_at: float | None = None
    beat_age_s: float | None = None  # seconds since the last beat, when it was read
    rss_mb: float | None = None
    health_port: int | None = None
    state: str | None = None  # "ready" or "draining"
    slots_min: int | None = None
    slots_max: int | None = None
    jobs_done: int | None = None
    meta: dict[str, str] = field(default_factory=dict)  # every @ field, "@" dropped

    @classmethod
    def of(cls, name: Any, raw: Mapping[Any, Any], *, ttl_ms: int | None = None
           ) -> WorkerBeat:
        """The beat of key ``name`` from its hash (and its PTTL in ms, if read)."""
        name = _text(name)
        pool, port = parse(raw)
        text = {_text(k): _text(v) for k, v in raw.items()}
        meta = {k.removeprefix(META): v for k, v in text.items() if k.startswith(META)}
        host, _, pid = name.removeprefix(PREFIX).rpartition(":")
        age = None if ttl_ms is None or ttl_ms < 0 else max(0.0, TTL_S - ttl_ms / 1000)
        return cls(key=name, host=meta.get("host") or host,
                   pid=_int(meta.get("pid")) or _int(pid) or 0, pool=pool, metrics_port=port,
                   started_at=_float(meta.get("started_at")),
                   beat_at=_float(meta.get("beat_at")), beat_age_s=age,
                   rss_mb=_float(meta.get("rss_mb")), health_port=_int(meta.get("health_port")),
                   state=meta.get("state"), slots_min=_int(meta.get("slots_min")),
                   slots_max=_int(meta.get("slots_max")), jobs_done=_int(meta.get("jobs_done")),
                   meta=meta)

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(sorted(self.pool))

    @property
    def slots(self) -> int:
        """The process's slots: each of them serves every queue it consumes."""
        return max((slots for slots, _ in self.pool.values()), default=0)

    @property
    def busy(self) -> int:
        """The jobs it runs now, over all its queues."""
        return sum(busy for _, busy in self.pool.values())

    @property
    def utilisation(self) -> float | None:
        return self.busy / self.slots if self.slots else None

    @property
    def uptime_s(self) -> float | None:
        """Since the process started, as of when the beat was read."""
        if self.started_at is None or self.beat_at is None:
            return None
        return max(0.0, self.beat_at - self.started_at + (self.beat_age_s or 0.0))


def read_all(client: Any) -> list[WorkerBeat]:
    """Every live worker process's beat (SCAN farm:pool:*), by host, queues and pid. A key
    that expires between the scan and the read is left out."""
    keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for name in keys:
        pipe.hgetall(name)
        pipe.pttl(name)
    found = pipe.execute()
    beats = [WorkerBeat.of(name, raw, ttl_ms=int(ttl))
             for name, raw, ttl in zip(keys, found[::2], found[1::2], strict=True) if raw]
    return sorted(beats, key=lambda b: (b.host, b.queues, b.pid))


class Heartbeat:
    """Beats for one process until ``stop()`` (which deletes its key). Each beat writes the
    pool's fields; with ``info`` (a worker's heartbeat: even one returning nothing), the
    process's own too (host, pid, start, this beat's time, resident memory) and what
    ``info()`` returns (``name -> value``, written as ``@name``). Without it the hash is the
    pool's alone, as before the ``@`` fields were."""

    def __init__(self, client: Any, pool: Callable[[], Mapping[str, tuple[int, int]]],
                 metrics_port: int | None, *, name: str | None = None,
                 every_s: float = EVERY_S,
                 info: Callable[[], Mapping[str, str]] | None = None,
                 host: str | None = None, pid: int | None = None,
                 started_at: float | None = None,
                 clock: Callable[[], float] = time.time,
                 rss: Callable[[], float | None] = rss_mb) -> None:
        self.client, self.pool, self.metrics_port = client, pool, metrics_port
        self.host, self.pid = host or socket.gethostname(), pid or os.getpid()
        self.key = name or key(self.host, self.pid)
        self.every_s = every_s
        self.info, self.clock, self.rss = info, clock, rss
        self.started_at = PROCESS_STARTED_AT if started_at is None else started_at
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def meta(self) -> dict[str, str]:
        """The ``@`` fields of this beat; an ``info`` that fails is left out (logged), the
        beat goes on without it."""
        if self.info is None:
            return {}
        given: Mapping[str, object] = {}
        try:
            given = self.info()
        except Exception as exc:
            log.warning("pool heartbeat: the worker's info failed: %s", type(exc).__name__)
        rss = self.rss()
        own = {"host": self.host, "pid": self.pid, "started_at": f"{self.started_at:.3f}",
               "beat_at": f"{self.clock():.3f}",
               "rss_mb": None if rss is None else f"{rss:.1f}"}
        return meta_fields({**given, **own})

    def beat(self) -> None:
        found = fields(self.pool(), self.metrics_port)
        found.update(self.meta())
        pipe = self.client.pipeline()
        pipe.delete(self.key)  # a queue no longer served must not linger
        pipe.hset(self.key, mapping=found)
        pipe.expire(self.key, TTL_S)
        pipe.execute()

    def start(self) -> Heartbeat:
        def run() -> None:
            while True:
                try:
                    self.beat()
                except Exception as exc:  # Redis away: beat again next round
                    log.warning("pool heartbeat failed: %s", type(exc).__name__)
                if self._stop.wait(self.every_s):
                    return

        self._thread = threading.Thread(target=run, name="farm-pool-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.client.delete(self.key)
        except Exception as exc:
            log.warning("pool heartbeat not deleted: %s", type(exc).__name__)
