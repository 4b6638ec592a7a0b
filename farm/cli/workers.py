"""The worker processes: `farm workers` lists every live one from its pool heartbeat
(farm.observe.heartbeat), `farm supervise` runs some under a supervisor that starts again
one that exits (farm.pool.supervisor; `make workers`). Registered on the `farm` command by
farm.cli.main."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from farm.cli.context import redis_client, settings_of
from farm.observe.heartbeat import TTL_S, WorkerBeat

TIMEOUT_S = 5.0
STOP_MARGIN_S = 15.0  # past FARM_SHUTDOWN_GRACE_S: the worker's own exit after its grace
EMPTY = f"no live workers (none has sent a heartbeat in the last {TTL_S} s)"


# --- farm workers ----------------------------------------------------------------------

def duration(seconds: float | None) -> str:
    """``42s``, ``5m12s``, ``2h03m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def slots_text(beat: WorkerBeat) -> str:
    """``40 (10-100)``: the slots now and their range, when the worker says it."""
    if beat.slots_min is None or beat.slots_max is None:
        return str(beat.slots)
    return f"{beat.slots} ({beat.slots_min}-{beat.slots_max})"


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def as_json(beat: WorkerBeat) -> dict[str, Any]:
    return {"host": beat.host, "pid": beat.pid, "queues": list(beat.queues),
            "pool": {q: {"slots": s, "busy": b} for q, (s, b) in sorted(beat.pool.items())},
            "slots": beat.slots, "slots_min": beat.slots_min, "slots_max": beat.slots_max,
            "busy": beat.busy, "utilisation": _round(beat.utilisation),
            "rss_mb": beat.rss_mb, "uptime_s": _round(beat.uptime_s),
            "beat_age_s": _round(beat.beat_age_s), "state": beat.state,
            "jobs_done": beat.jobs_done, "started_at": beat.started_at,
            "beat_at": beat.beat_at, "metrics_port": beat.metrics_port,
            "health_port": beat.health_port, "key": beat.key}


def summary(beats: Sequence[WorkerBeat]) -> str:
    slots, busy = sum(b.slots for b in beats), sum(b.busy for b in beats)
    hosts = len({b.host for b in beats})
    use = f" ({100 * busy / slots:.0f}%)" if slots else ""
    return (f"{len(beats)} live worker{'s' * (len(beats) != 1)} on {hosts} "
            f"host{'s' * (hosts != 1)}: {slots} slots, {busy} busy{use}")


def table(beats: Sequence[WorkerBeat]) -> Any:
    """The rich table of `farm workers` (pure: values in, a renderable out)."""
    from rich.table import Table
    from rich.text import Text

    shown = Table(title=summary(beats), title_justify="left")
    for column in ("host", "pid", "queues", "slots (min-max)", "busy", "util", "RSS MB",
                   "uptime", "last beat", "jobs done", "state"):
        shown.add_column(column, justify="left" if column in ("host", "queues", "state")
                         else "right")
    for b in beats:
        state = b.state or "-"
        style = {"ready": "green", "draining": "yellow"}.get(state, "")
        shown.add_row(b.host, str(b.pid), ",".join(b.queues), slots_text(b), str(b.busy),
                      "-" if b.utilisation is None else f"{100 * b.utilisation:.0f}%",
                      "-" if b.rss_mb is None else f"{b.rss_mb:.0f}", duration(b.uptime_s),
                      "-" if b.beat_age_s is None else f"{b.beat_age_s:.0f}s ago",
                      "-" if b.jobs_done is None else str(b.jobs_done),
                      Text(state, style=style))
    return shown


@click.command()
@click.option("--json", "as_json_out", is_flag=True, help="The workers as JSON.")
@click.pass_context
def workers(ctx: click.Context, as_json_out: bool) -> None:
    """Every live worker process (from its pool heartbeat): host, pid, queues, slots now
    and their range, busy, utilisation, resident memory, uptime, seconds since its last
    heartbeat, jobs done and state (ready, draining)."""
    from farm.observe.heartbeat import read_all

    with redis_client(ctx, TIMEOUT_S) as client:  # a listing ends in bounded time
        beats = read_all(client)
    if as_json_out:
        click.echo(json.dumps({"workers": [as_json(b) for b in beats]}, indent=2))
        return
    if not beats:
        click.echo(EMPTY)
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or a file: rows whole, not cut at 80 columns
    console.print(table(beats))


# --- farm supervise --------------------------------------------------------------------

def parse_worker(ctx: click.Context, text: str) -> tuple[str, list[str]]:
    """``"QUEUES [OPTIONS]"`` of one --worker: (queues, `farm worker` options), both checked
    here (a worker that cannot start is better refused before anything runs)."""
    words = shlex.split(text)
    if not words or words[0].startswith("-"):
        raise click.BadParameter(f"{text!r}: give the queues first, e.g. 'farm-intake -c 8'",
                                 param_hint="--worker")
    queues, options = words[0], words[1:]
    known = settings_of(ctx).servable_queues
    for name in queues.split(","):
        if name not in known:
            raise click.BadParameter(f"unknown queue {name!r}; known: {', '.join(known)}",
                                     param_hint="--worker")
    command = ctx.find_root().command
    worker = command.get_command(ctx, "worker") if isinstance(command, click.Group) else None
    if worker is not None:
        try:
            worker.make_context("worker", ["-Q", queues, *options], parent=ctx)
        except click.UsageError as exc:
            raise click.BadParameter(f"{text!r}: {exc.format_message()}",
                                     param_hint="--worker") from None
    return queues, options


@click.command()
@click.option("--worker", "-w", "worker_specs", multiple=True, required=True,
              metavar="'QUEUES [OPTIONS]'",
              help="A worker to run: `farm worker -Q QUEUES OPTIONS` (repeat for more; the "
                   "same queues again run another process).")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where each worker's log goes (worker-NAME.log) [default: "
                   "FARM_DATA_DIR/run].")
@click.option("--strict-start", is_flag=True,
              help="Until every worker has been ready once, a worker that exits stops them "
                   "all (exit status 1) instead of being restarted.")
@click.pass_context
def supervise(ctx: click.Context, worker_specs: tuple[str, ...], log_dir: Path | None,
              strict_start: bool) -> None:
    """Run workers and start again any that exits: at once after a drain (recycling, exit
    status 0) or a long healthy run, with a growing wait (1 s doubling to 60 s) in a crash
    loop. SIGTERM or SIGINT stops them all (warm shutdown), SIGKILL after
    FARM_SHUTDOWN_GRACE_S + 15 s."""
    from farm.pool.supervisor import Supervisor, farm_worker_specs

    settings = settings_of(ctx)
    if settings.anthropic_api_key is None:
        raise click.ClickException("ANTHROPIC_API_KEY is not set: the workers need it (for "
                                   "the simulator, any value and ANTHROPIC_BASE_URL)")
    parsed = [parse_worker(ctx, text) for text in worker_specs]
    specs = farm_worker_specs(parsed, log_dir or settings.data_dir / "run")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(message)s")
    code = Supervisor(specs, strict_start=strict_start,
                      stop_bound_s=settings.shutdown_grace_s + STOP_MARGIN_S).run()
    ctx.exit(code)


COMMANDS = (workers, supervise)
