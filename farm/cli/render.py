"""What the job commands print, as pure functions of what the farm returned: no I/O, no
click. Money goes through ``farm.costs.money.usd`` (``$0.000146``, never ``0E-10``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from typing import TYPE_CHECKING

from farm.costs.money import usd

if TYPE_CHECKING:
    from farm.client import JobView

Problem = tuple[int, str, str]  # InvalidJobError.problems: (job index, field, message)


def invalid_jobs(problems: Sequence[Problem], where: Callable[[int], str]) -> str:
    """InvalidJobError's problems for a terminal: each names its job (`where(index)`: a
    file's line, or "" for the one job of --prompt) and its field once. One problem, one
    line."""
    lines = [f"{where(index)}{field}: {message}" for index, field, message in problems]
    head = "invalid job(s), nothing was enqueued"
    if len(lines) == 1:
        return f"{head}: {lines[0]}"
    return head + ":\n  " + "\n  ".join(lines)


def cost(view: JobView) -> str:
    """A job's cost for people; says when a call ran on a model with no price row."""
    if view.cost_unknown:
        return "unknown (a call ran on a model with no price row)"
    return usd(view.cost_usd)


def job_line(view: JobView) -> str:
    """One finished (or not) job on one line: id, status, model, cost, text or error."""
    text = (view.response_text or view.error or "")[:80]
    return (f"{view.id} {view.status.value} {view.served_model or view.model} "
            f"cost={cost(view)} {text!r}")


def status_lines(view: JobView) -> list[str]:
    """Every field of a job, one per line; money for people (JSON has it exact)."""
    data = json.loads(view.model_dump_json())
    data["cost_usd"] = cost(view)
    return [f"{key:<28}{value}" for key, value in data.items()]


class Progress:
    """When `farm wait` prints a progress line (to stderr, so --json output stays clean):
    none in the first `every_s` (a short wait stays quiet); then one when the count of
    finished jobs changed, at most one per `every_s`, one after `quiet_s` without change
    (the wait is alive), and the last one when all are finished."""

    def __init__(self, total: int, start: float, *, every_s: float = 2.0,
                 quiet_s: float = 30.0) -> None:
        self.total, self.start = total, start
        self.every_s, self.quiet_s = every_s, quiet_s
        self.last_at: float | None = None
        self.last_done = -1

    def line(self, done: int, now: float) -> str | None:
        """The line to print after a look that found `done` jobs finished, or None."""
        if now - self.start < self.every_s:
            return None
        since = None if self.last_at is None else now - self.last_at
        changed = done != self.last_done
        final = done == self.total and changed and self.last_at is not None
        due = since is None or (since >= self.every_s and (changed or since >= self.quiet_s))
        if not (final or due):
            return None
        self.last_at, self.last_done = now, done
        return f"{done}/{self.total} finished ({now - self.start:.0f}s)"


def unfinished(pending: Sequence[uuid.UUID], statuses: Mapping[uuid.UUID, str]) -> list[str]:
    """The jobs a wait gave up on, one per line with its status (a job with no row is one
    sent inline that no worker has taken yet)."""
    return [f"{job_id} {statuses.get(job_id, 'not recorded yet (no worker has taken it)')}"
            for job_id in pending]


def jobs_table(views: Sequence[JobView]) -> list[str]:
    """`farm jobs`: one job per line, newest first as given, under a header."""
    lines = [f"{'id':<37}{'created (UTC)':<20}{'status':<11}{'queue':<16}{'model':<19}"
             f"{'tenant':<14}{'cost':>10}"]
    for v in views:
        lines.append(f"{v.id!s:<37}{v.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} "
                     f"{v.status.value:<11}{v.queue:<16}{v.served_model or v.model:<19}"
                     f"{v.tenant:<14}{'unknown' if v.cost_unknown else usd(v.cost_usd):>10}")
    return lines
