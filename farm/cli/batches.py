"""Message Batches from the command line: `farm batches list | show ID | cancel ID`
(registered on the `farm` command by farm.cli.main). ID is the farm's batch id or the
provider's ``msgbatch_…`` id."""

from __future__ import annotations

import json
from typing import Any

import click

from farm.cli.context import farm_client, settings_of
from farm.costs.money import usd

STATUSES = ("creating", "in_progress", "canceling", "ended", "done", "failed")


@click.group(invoke_without_command=True)
@click.pass_context
def batches(ctx: click.Context) -> None:
    """Message Batches (half price, within 24 h): list, show, cancel."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(batches_list)


def _line(row: dict[str, Any]) -> str:
    counts = row.get("request_counts") or {}
    ended = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)
    return (f"{row['id']}  {row['provider_id'] or '-':<34} {row['model']:<20} "
            f"{row['status']:<11} {row['request_count']:>6} req  "
            f"{row['recorded'] or 0:>6} recorded  {usd(row['cost_usd']):>10}  "
            f"{row['created_at']:%Y-%m-%d %H:%M:%S}" + (f"  ({ended})" if ended else ""))


@batches.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def batches_list(ctx: click.Context, status: str | None = None, limit: int = 50,
                 as_json: bool = False) -> None:
    """Batches, newest first, with their recorded results and what those cost."""
    from farm.batches import control

    with farm_client(ctx) as farm:
        rows = control.listing(farm.db, limit=limit, status=status)
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    for row in rows:
        click.echo(_line(row))
    click.echo(f"{len(rows)} batch(es)")


@batches.command("show")
@click.argument("ident", metavar="ID")
@click.pass_context
def batches_show(ctx: click.Context, ident: str) -> None:
    """One batch (the farm's id or the provider's)."""
    from farm.batches import control

    with farm_client(ctx) as farm:
        try:
            row = control.show(farm.db, ident)
        except KeyError as exc:
            raise click.ClickException(str(exc).strip("'\"")) from None
    click.echo(json.dumps(row, default=str, indent=2))


@batches.command("cancel")
@click.argument("ident", metavar="ID")
@click.pass_context
def batches_cancel(ctx: click.Context, ident: str) -> None:
    """Cancel a batch: its jobs (at once) and the provider's batch (what it has not
    processed yet is not billed; what it has is recorded with its cost)."""
    from farm.batches import control
    from farm.provider.messages import make_client

    settings = settings_of(ctx)
    if settings.anthropic_api_key is None:
        raise click.ClickException("ANTHROPIC_API_KEY is not set: cancelling a batch asks "
                                   "the provider")
    with farm_client(ctx) as farm:
        client = make_client(settings)
        try:
            done = control.cancel(farm.db, client, ident)
        except KeyError as exc:
            raise click.ClickException(str(exc).strip("'\"")) from None
        finally:
            client.close()
    click.echo(f"batch {done.batch['id']} ({done.batch['provider_id'] or 'not created'}): "
               f"{done.jobs} job(s) cancelled; provider: {done.provider}")


COMMANDS = (batches,)
