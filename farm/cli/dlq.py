"""The dead-letter queue from the command line: `farm dlq list | show | replay | purge`
(registered on the `farm` command by farm.cli.main)."""

from __future__ import annotations

import json
import uuid

import click

from farm.cli.context import farm_client


@click.group()
def dlq() -> None:
    """The dead-letter queue: list, show, replay, purge."""


@dlq.command("list")
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed entries.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_list(ctx: click.Context, include_replayed: bool, limit: int, as_json: bool) -> None:
    """Dead jobs, newest first."""
    with farm_client(ctx) as farm:
        rows = farm.dead_letters(limit=limit, include_replayed=include_replayed)
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    for r in rows:
        replay = f" -> replayed as {r['replayed_as']}" if r["replayed_as"] else ""
        click.echo(f"{r['job_id']}  {r['queue']:<15} {r['error_class']:<14} "
                   f"attempts={r['attempts']}  last={r['last_failure_at']:%Y-%m-%d %H:%M:%S}  "
                   f"{r['error_message'][:60]!r}{replay}")
    click.echo(f"{len(rows)} dead job(s)")


@dlq.command("show")
@click.argument("job_id", type=click.UUID)
@click.pass_context
def dlq_show(ctx: click.Context, job_id: uuid.UUID) -> None:
    """One dead job, with its request."""
    with farm_client(ctx) as farm:
        try:
            row = farm.dead_letter(job_id)
        except (KeyError, ValueError) as exc:
            raise click.ClickException(str(exc).strip("'")) from None
    click.echo(json.dumps(row, default=str, indent=2))


@dlq.command("replay")
@click.argument("job_ids", nargs=-1, type=click.UUID)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead job not replayed.")
@click.pass_context
def dlq_replay(ctx: click.Context, job_ids: tuple[uuid.UUID, ...], replay_all: bool) -> None:
    """Send dead jobs through the router again, as new jobs with a fresh attempt budget."""
    if replay_all == bool(job_ids):
        raise click.UsageError("give job ids or --all (not both)")
    with farm_client(ctx) as farm:
        try:
            pairs = farm.replay(None if replay_all else list(job_ids))
        except (KeyError, ValueError) as exc:
            raise click.ClickException(str(exc).strip("'")) from None
    for old, new in pairs:
        click.echo(f"{old} -> {new}")
    click.echo(f"replayed {len(pairs)} job(s)")


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_context
def dlq_purge(ctx: click.Context, yes: bool) -> None:
    """Forget every dead letter (the jobs' rows stay) and empty the dead-letter queue."""
    if not yes:
        click.confirm("Delete every dead-letter entry?", abort=True)
    with farm_client(ctx) as farm:
        rows, messages = farm.purge_dead_letters()
    click.echo(f"purged {rows} dead-letter row(s) and {messages} queued message(s)")
