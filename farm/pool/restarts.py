"""When the supervisor (farm.pool.supervisor) starts a worker again after it exited: a pure
policy, no I/O and no clock of its own (the supervisor gives it how long the worker ran).

- A clean exit (status 0) is a worker that drained on purpose (FARM_WORKER_MAX_RSS_MB,
  FARM_WORKER_MAX_JOBS, a SIGTERM of its own): it is replaced at once.
- A crash (another status, or a signal) after a long healthy run (``healthy_s``) is
  restarted at once too: one crash in a long while is no loop.
- A crash soon after the start, or a clean exit sooner than ``quick_s`` (a worker that
  cannot even start, but says 0), is one more of a crash loop: the n-th in a row waits
  ``backoff_s * factor**(n-1)``, at most ``max_backoff_s``. A run of ``healthy_s`` or a
  drain ends the loop.
- While the supervisor is stopping, nothing is restarted.
"""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    healthy_s: float = 60.0  # a run this long ends a crash loop
    quick_s: float = 5.0  # a clean exit sooner than this counts as a crash
    backoff_s: float = 1.0  # the wait after the first quick crash
    factor: float = 2.0
    max_backoff_s: float = 60.0

    def __post_init__(self) -> None:
        if not (0 <= self.quick_s <= self.healthy_s and 0 < self.backoff_s
                <= self.max_backoff_s and self.factor >= 1):
            raise ValueError(f"inconsistent restart policy: {self}")


@dataclass(frozen=True)
class Exit:
    """How a worker process ended: its exit status, or the signal that killed it (a
    subprocess' returncode: negative for a signal), and how long it had run."""

    returncode: int
    ran_s: float

    @property
    def clean(self) -> bool:
        return self.returncode == 0

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    def describe(self) -> str:
        """``exited with status 3 after 12s`` or ``was killed by SIGKILL after 40s``."""
        ran = f"after {self.ran_s:.0f}s"
        if self.signal is None:
            return f"exited with status {self.returncode} {ran}"
        try:
            name = signals.Signals(self.signal).name
        except ValueError:
            name = f"signal {self.signal}"
        return f"was killed by {name} {ran}"


@dataclass(frozen=True)
class Restart:
    """What to do about an exit: restart after ``delay_s``; ``reason`` for the log;
    ``streak``: the quick crashes in a row so far (0 after a drain or a healthy run)."""

    delay_s: float
    reason: str
    streak: int


def decide(policy: RestartPolicy, streak: int, ended: Exit, *, stopping: bool = False
           ) -> Restart | None:
    """The restart after ``ended``, given the quick crashes in a row before it (``streak``);
    None while the supervisor is stopping."""
    if stopping:
        return None
    if ended.clean and ended.ran_s >= policy.quick_s:
        return Restart(0.0, "drained", 0)
    if ended.ran_s >= policy.healthy_s:
        return Restart(0.0, "crashed after a healthy run", 0)
    streak += 1
    delay = min(policy.max_backoff_s, policy.backoff_s * policy.factor ** (streak - 1))
    reason = "exited at once" if ended.clean else "crashed"
    return Restart(delay, f"{reason}, {_nth(streak)} time in a row", streak)


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def line(name: str, ended: Exit, restart: Restart | None) -> str:
    """The supervisor's log line for an exit, e.g. ``worker haiku-simple exited with status 0
    after 812s (drained); restarting now``."""
    head = f"worker {name} {ended.describe()}"
    if restart is None:
        return f"{head} (stopping: not restarted)"
    when = "now" if restart.delay_s == 0 else f"in {restart.delay_s:g}s"
    return f"{head} ({restart.reason}); restarting {when}"
