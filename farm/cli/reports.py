"""`farm report`: the cost report as a table, JSON or one self-contained HTML page
(registered on the `farm` command by farm.cli.main)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from farm.cli import parsing
from farm.cli.context import farm_client

if TYPE_CHECKING:
    from farm.costs.reports import ReportRow


def _since(ctx: click.Context, param: click.Parameter, text: str | None) -> datetime | None:
    try:
        return None if text is None else parsing.since(text, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _by(ctx: click.Context, param: click.Parameter, items: tuple[str, ...],
        ) -> tuple[str, ...]:
    from farm.costs.reports import check_keys

    try:
        return check_keys(items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command()
@click.option("--by", "by", multiple=True, callback=_by, metavar="KEYS",
              help="Group by day, tenant, queue, model or complexity (repeat, or a comma "
                   "list: --by day,model). Rows get P50/P95/P99 latency and the savings of "
                   "routing. Default: the per queue and model table.")
@click.option("--since", callback=_since, metavar="WHEN",
              help="Jobs created since: hours back (6, 1.5), a duration (30m, 2h, 7d) or an "
                   "ISO time (UTC unless it has an offset).")
@click.option("--since-hours", type=float, default=None, help="Hours back (as --since 6).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              metavar="FILE", help="Write one self-contained HTML page with charts.")
@click.pass_context
def report(ctx: click.Context, by: tuple[str, ...], since: datetime | None,
           since_hours: float | None, as_json: bool, html_path: str | None) -> None:
    """Cost report: jobs, tokens, cost, calls, errors and latency per queue and model, or
    grouped --by day, tenant, queue, model; --html FILE for a page with charts."""
    if since is not None and since_hours is not None:
        raise click.UsageError("give --since or --since-hours, not both")
    if since_hours is not None:
        since = datetime.now(UTC) - timedelta(hours=since_hours)
    if html_path is not None and (by or as_json):
        raise click.UsageError("--html draws its own groupings: --by and --json do not "
                               "apply to it")
    with farm_client(ctx) as farm:
        if html_path is not None:
            try:
                written = farm.report_html(Path(html_path), since=since)
            except OSError as exc:
                raise click.ClickException(f"cannot write {html_path}: {exc.strerror}"
                                           ) from None
            click.echo(f"wrote {written}")
            return
        if not by:
            _summary(farm.report(since=since), as_json)
            return
        rows = farm.report(since=since, by=by)
        total = farm.report(since=since, by=())[0]
    if as_json:
        keep = set(by)
        dropped = {"day", "tenant", "queue", "model", "complexity"} - keep
        click.echo(json.dumps([json.loads(r.model_dump_json(exclude=dropped)) for r in rows],
                              indent=2))
    else:
        from farm.costs.reports import render_grouped

        click.echo(render_grouped(rows, by, total))


def _summary(rows: list[ReportRow], as_json: bool) -> None:
    from farm.costs.reports import render

    if as_json:
        click.echo(json.dumps([json.loads(r.model_dump_json()) for r in rows], indent=2))
    else:
        click.echo(render(rows))


COMMANDS = (report,)
