"""`farm top`: the Snapshot and the alerts firing on it as one terminal frame (rich).
``frame`` is pure: it builds rich renderables from values."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Group
from rich.table import Table
from rich.text import Text

from farm.observe.evaluate import Evaluation
from farm.observe.figures import Snapshot


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s" if value < 10 else f"{value:.0f}s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def frame(snap: Snapshot, alerts: Evaluation) -> Group:
    when = datetime.fromtimestamp(snap.taken_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    t = snap.total
    head = Text.assemble(
        ("farm top", "bold"), f"  {when}   ",
        f"throughput {60 * snap.throughput_per_s:.1f} jobs/min   ",
        f"P50 {_s(t.p50_s)}  P95 {_s(t.p95_s)}  P99 {_s(t.p99_s)}   ",
        f"errors {_pct(t.error_rate)}   ",
        f"cost ${snap.cost_usd_per_hour:,.2f}/h   ",
        ("HELD: " + snap.hold.reason, "bold red") if snap.hold else ("not held", "green"))
    queues = Table(title="queues (last 5 min)", title_justify="left", expand=False)
    for column in ("queue", "depth", "waiting", "unacked", "delayed", "oldest wait",
                   "busy/slots", "util", "done", "errors", "P50", "P95", "P99"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in snap.queues:
        w = q.window
        queues.add_row(q.queue, str(q.depth), str(q.waiting), str(q.unacked), str(q.delayed),
                       _s(q.oldest_wait_s), f"{q.busy}/{q.slots}", _pct(q.utilisation),
                       str(w.finished), _pct(w.error_rate), _s(w.p50_s), _s(w.p95_s),
                       _s(w.p99_s))
    models = Table(title="models", title_justify="left")
    for column in ("model", "circuit", "limiter use", "cost (1 h)"):
        models.add_column(column)
    cost = dict(snap.cost_by_model)
    for c in snap.circuits:
        use = ", ".join(f"{u.kind} {100 * u.ratio:.0f}%" for u in snap.limiters
                        if u.model == c.model) or "-"
        state = Text(c.state, style="bold red" if c.open else "green")
        models.add_row(c.model, state, use, f"${cost.get(c.model, 0.0):,.4f}")
    statuses = "  ".join(f"{s} {n}" for s, n in snap.jobs_by_status) or "-"
    parts: list[Text | Table] = [head, Text(f"jobs: {statuses}"), queues, models]
    if alerts.firing:
        parts.append(Text("firing:", style="bold red"))
        parts.extend(Text(f"  {a.name} [{a.rule.severity.value}] {a.summary}", style="red")
                     for a in alerts.firing)
    else:
        parts.append(Text("no alert firing", style="green"))
    parts.extend(Text(f"! {p}", style="yellow") for p in snap.problems)
    return Group(*parts)
