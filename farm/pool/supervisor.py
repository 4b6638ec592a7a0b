"""The supervisor of `farm supervise` (and so of `make workers`): runs worker processes as
its children, starts again one that exits (farm.pool.restarts decides when), and stops them
all on SIGTERM or SIGINT.

- Each child writes its output to a log of its own (``WorkerSpec.log``, appended to); the
  supervisor watches it for the worker's ready line and logs ``worker NAME ready (pid N)``,
  and ``all N workers ready.`` the first time all are (what `ops/procs.py start --ready
  worker` waits for). A child that exits before it was ready has its log's tail logged.
- Children stay in the supervisor's process group: a signal to the group (`procs.py stop`,
  Ctrl-C) reaches them too, and on Linux each gets SIGTERM if the supervisor dies (so no
  worker outlives it unsupervised).
- Stopping: SIGTERM to every child (a Celery worker's warm shutdown: it finishes its jobs
  within FARM_SHUTDOWN_GRACE_S), no restart from then on, and once every child has exited
  the supervisor exits 0; children still running after ``stop_bound_s`` are SIGKILLed (their
  jobs come back through their leases) and it exits 1.
- ``strict_start``: until every worker has been ready once, a worker that exits makes the
  supervisor stop the others and exit 1 (a worker that cannot start is an error to report,
  not to retry, for `make workers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from farm.pool.restarts import Exit, RestartPolicy, decide, line
from farm.worker.command import READY_MARK

log = logging.getLogger("farm.supervisor")

TICK_S = 0.2
TAIL_LINES = 12
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class WorkerSpec:
    """One supervised process: its name in the log, its command, its output's file."""

    name: str
    argv: tuple[str, ...]
    log: Path


def farm_worker_specs(workers: Sequence[tuple[str, Sequence[str]]], log_dir: Path
                      ) -> list[WorkerSpec]:
    """`farm worker -Q QUEUES OPTIONS...` for each (queues, options); each named after its
    queues (``-2``, ``-3`` ... for the same queues again), logging to
    ``log_dir/worker-NAME.log``."""
    specs: list[WorkerSpec] = []
    seen: dict[str, int] = {}
    for queues, options in workers:
        seen[queues] = seen.get(queues, 0) + 1
        name = queues if seen[queues] == 1 else f"{queues}-{seen[queues]}"
        argv = (sys.executable, "-m", "farm.cli", "worker", "-Q", queues, *options)
        specs.append(WorkerSpec(name, argv, log_dir / f"worker-{name}.log"))
    return specs


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1


def _child_setup(parent: int) -> Callable[[], None]:
    """Run in the child between fork and exec: take the stop signals the supervisor held
    while it forked, and (Linux) ask for SIGTERM when the supervisor dies."""
    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
            if os.getppid() != parent:  # the supervisor died before the line above
                os._exit(1)

    return setup


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """The stop signals wait (are not lost) while a child is started: a stop never races
    a restart."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class _Child:
    spec: WorkerSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    offset: int = 0  # where this run's output starts in the log
    searched: int = 0  # how far the log was searched for the ready line
    ready: bool = False
    streak: int = 0  # quick crashes in a row
    start_at: float | None = 0.0  # when to start it next; None: not while stopping


class Supervisor:
    def __init__(self, specs: Sequence[WorkerSpec], *, stop_bound_s: float,
                 policy: RestartPolicy | None = None, strict_start: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, tick_s: float = TICK_S,
                 ready_mark: str = READY_MARK) -> None:
        if not specs:
            raise ValueError("nothing to supervise")
        self.children = [_Child(spec) for spec in specs]
        self.policy = policy or RestartPolicy()
        self.stop_bound_s, self.strict_start = stop_bound_s, strict_start
        self.clock, self.sleep, self.tick_s = clock, sleep, tick_s
        self.mark = ready_mark.encode()
        self.stop_reason: str | None = None  # set from a signal handler: read, never race
        self.kill_at: float | None = None  # set once the stop began
        self.all_ready_once = False
        self.exit_code = 0

    # --- from outside ----------------------------------------------------------------

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.exit_code = reason, exit_code

    def run(self) -> int:
        """Supervise until stopped; the exit status (0: every child stopped in time)."""
        def on_signal(signum: int, _: FrameType | None) -> None:
            if self.stop_reason is not None:
                log.info("supervisor: %s again: already stopping",
                         signal.Signals(signum).name)
            self.request_stop(f"{signal.Signals(signum).name} received")

        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        try:
            log.info("supervisor: pid %d, supervising %s", os.getpid(),
                     ", ".join(c.spec.name for c in self.children))
            while (code := self.step()) is None:
                self.sleep(self.tick_s)
            return code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for child in self.children:  # only after an error: none is left otherwise
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.terminate()

    # --- one round ---------------------------------------------------------------------

    def step(self) -> int | None:
        """Look at every child once: the exit status when the supervisor is done."""
        now = self.clock()
        if self.stop_reason is not None and self.kill_at is None:
            self._begin_stop(now)
        self._reap(now)
        if self.kill_at is None:
            self._start_due(now)
            self._watch_ready()
            return None
        live = [c for c in self.children if c.proc is not None]
        if not live:
            log.info("supervisor: every worker stopped; exiting with status %d",
                     self.exit_code)
            return self.exit_code
        if now >= self.kill_at:
            for child in live:
                assert child.proc is not None
                log.warning("supervisor: worker %s (pid %d) still running %.0fs after the "
                            "stop: SIGKILL", child.spec.name, child.proc.pid,
                            self.stop_bound_s)
                child.proc.kill()
                child.proc.wait()
                child.proc = None
            return 1
        return None

    def _begin_stop(self, now: float) -> None:
        self.kill_at = now + self.stop_bound_s
        live = [c for c in self.children if c.proc is not None]
        if live:
            log.info("supervisor: %s: stopping %d worker(s) (SIGTERM: warm shutdown; "
                     "SIGKILL after %.0fs)", self.stop_reason, len(live), self.stop_bound_s)
        else:
            log.info("supervisor: %s: no worker left running", self.stop_reason)
        for child in self.children:
            child.start_at = None
            if child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)

    def _reap(self, now: float) -> None:
        for child in self.children:
            if child.proc is None or (code := child.proc.poll()) is None:
                continue
            ended = Exit(code, now - child.started_at)
            was_ready, child.proc, child.ready = child.ready, None, False
            stopping = self.stop_reason is not None
            if not was_ready and not stopping:  # why it could not start, as far as it said
                log.info("supervisor: worker %s %s before it was ready; its log (%s) ends:"
                         "\n%s", child.spec.name, ended.describe(), child.spec.log,
                         self._tail(child))
            if self.strict_start and not self.all_ready_once and not stopping:
                log.error("supervisor: worker %s did not start: stopping", child.spec.name)
                self.request_stop(f"worker {child.spec.name} did not start", exit_code=1)
                stopping = True
            restart = decide(self.policy, child.streak, ended, stopping=stopping)
            log.log(logging.INFO if ended.clean else logging.WARNING, "supervisor: %s",
                    line(child.spec.name, ended, restart))
            if restart is not None:
                child.streak, child.start_at = restart.streak, now + restart.delay_s
            else:
                child.start_at = None

    def _start_due(self, now: float) -> None:
        for child in self.children:
            if child.proc is not None or child.start_at is None or child.start_at > now:
                continue
            with _signals_held():
                if self.stop_reason is not None:
                    return  # the stop came first: the next round begins it
                self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log, "ab") as out:  # the child keeps its own descriptor
            child.offset = child.searched = out.tell()
            child.proc = subprocess.Popen(
                spec.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup(os.getpid()))  # safe: the supervisor has no threads
        child.started_at, child.start_at, child.ready = self.clock(), None, False
        log.info("supervisor: started worker %s (pid %d, log %s)", spec.name, child.proc.pid,
                 spec.log)

    def _watch_ready(self) -> None:
        for child in self.children:
            if child.proc is None or child.ready:
                continue
            start = max(child.offset, child.searched - len(self.mark) + 1)
            try:
                with open(child.spec.log, "rb") as f:
                    f.seek(start)
                    found = f.read()
            except FileNotFoundError:
                continue
            child.searched = start + len(found)
            if self.mark in found:
                child.ready = True
                log.info("supervisor: worker %s is up (pid %d)", child.spec.name,
                         child.proc.pid)
        if not self.all_ready_once and all(c.ready for c in self.children):
            self.all_ready_once = True
            # the line `ops/procs.py start --ready worker` waits for
            n = len(self.children)
            log.info("supervisor: %s%s", "the worker is" if n == 1 else f"all {n} workers are",
                     READY_MARK)

    def _tail(self, child: _Child) -> str:
        try:
            with open(child.spec.log, "rb") as f:
                f.seek(child.offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            text = ""
        lines = text.strip().splitlines()[-TAIL_LINES:] or ["(it wrote nothing)"]
        return "\n".join(f"  | {ln}" for ln in lines)
