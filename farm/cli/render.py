"""What the job commands print, as pure functions of what the farm returned: no I/O, no
click. Money goes through ``farm.costs.money.usd`` (``$0.000146``, never ``0E-10``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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
