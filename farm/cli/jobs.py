"""Jobs from the command line: `farm submit`, `farm status`, `farm wait`, `farm cancel` and
`farm report` (registered on the `farm` command by farm.cli.main)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from farm.cli import render
from farm.cli.context import farm_client


@click.command()
@click.option("--prompt", help="The user prompt.")
@click.option("--system", default=None)
@click.option("--complexity", type=click.Choice(["auto", "simple", "complex"]), default="auto")
@click.option("--model", default=None)
@click.option("--max-tokens", type=int, default=1024)
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default="normal")
@click.option("--tenant", default="default")
@click.option("--file", "path", type=click.Path(dir_okay=False, allow_dash=True),
              help="JSONL: one job per line, with the Python API's field names.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def submit(ctx: click.Context, /, prompt: str | None, path: str | None, as_json: bool,
           **fields: Any) -> None:
    """Submit one job (--prompt) or many (--file jobs.jsonl)."""
    from farm.client import InvalidJobError

    if (prompt is None) == (path is None):
        raise click.UsageError("give exactly one of --prompt or --file")
    if path is not None:
        lines = _read_jsonl(path)
        jobs = [job for _, job in lines]

        def where(index: int) -> str:
            return f"{path}:{lines[index][0]}: "
    else:
        jobs = [{k: v for k, v in {**fields, "prompt": prompt}.items() if v is not None}]

        def where(index: int) -> str:
            return ""
    with farm_client(ctx) as farm:
        try:
            ids = farm.submit_many(jobs)
        except InvalidJobError as exc:
            raise click.ClickException(render.invalid_jobs(exc.problems, where)) from None
    if as_json:
        click.echo(json.dumps({"job_ids": [str(i) for i in ids]}))
    else:
        click.echo("\n".join(str(i) for i in ids))


def _read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    """The jobs of a JSONL file (blank lines skipped), each with its line number."""
    stream = click.open_file(path, "r", encoding="utf-8")
    jobs = []
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise click.ClickException(f"{path}:{number}: a job must be a JSON object")
            jobs.append((number, item))
    if not jobs:
        raise click.ClickException(f"{path}: no jobs")
    return jobs


def _view_dict(view: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(view.model_dump_json())
    return data


@click.command()
@click.argument("job_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, job_id: uuid.UUID, as_json: bool) -> None:
    """Show one job."""
    with farm_client(ctx) as farm:
        try:
            view = farm.status(job_id)
        except (KeyError, ValueError) as exc:
            raise click.ClickException(str(exc).strip("'")) from None
    if as_json:
        click.echo(json.dumps(_view_dict(view), indent=2))
    else:
        click.echo("\n".join(render.status_lines(view)))


class WaitTimedOut(click.ClickException):
    """`farm wait`'s timeout passed first: exit status 3 (1 is a job that did not succeed)."""

    exit_code = 3


@click.command()
@click.argument("job_ids", nargs=-1, required=True, type=click.UUID)
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Give up after this many seconds (exit status 3), listing what is left.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def wait(ctx: click.Context, job_ids: tuple[uuid.UUID, ...], timeout: float | None,
         as_json: bool) -> None:
    """Wait until the jobs are finished; print their results (exit status 1 if any did not
    succeed). An id with no job is an error at once; progress goes to stderr."""
    from farm.client import WaitTimeoutError

    ids = list(dict.fromkeys(job_ids))
    with farm_client(ctx) as farm:
        unknown = farm.unknown(ids)
        if unknown is None:
            click.echo("note: the queues are too long to look for the messages of jobs "
                       "without a row: waiting for them as jobs not recorded yet", err=True)
        elif unknown:
            raise click.ClickException("no such job: " + ", ".join(map(str, unknown)))
        progress = render.Progress(len(ids), time.monotonic())

        def on_progress(done: int, total: int) -> None:
            line = progress.line(done, time.monotonic())
            if line is not None:
                click.echo(line, err=True)

        try:
            views = farm.wait(ids, timeout=timeout, on_progress=on_progress)
        except WaitTimeoutError as exc:
            statuses = {v.id: v.status.value for v in farm.statuses(exc.pending)}
            raise WaitTimedOut("\n  ".join([f"{exc}:", *render.unfinished(exc.pending,
                                                                           statuses)])) from None
    if as_json:
        click.echo(json.dumps([_view_dict(v) for v in views], indent=2))
    else:
        for v in views:
            click.echo(render.job_line(v))
    if any(v.status.value != "succeeded" for v in views):
        sys.exit(1)


@click.command()
@click.argument("job_id", type=click.UUID)
@click.pass_context
def cancel(ctx: click.Context, job_id: uuid.UUID) -> None:
    """Cancel a queued or running job."""
    with farm_client(ctx) as farm:
        try:
            click.echo(farm.cancel(job_id).value)
        except (KeyError, ValueError) as exc:
            raise click.ClickException(str(exc).strip("'")) from None


@click.command()
@click.option("--since-hours", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def report(ctx: click.Context, since_hours: float | None, as_json: bool) -> None:
    """Cost report per queue and model: jobs, tokens, cost, latency, errors."""
    from farm.costs.reports import render as table

    since = None
    if since_hours is not None:
        since = datetime.now(UTC) - timedelta(hours=since_hours)
    with farm_client(ctx) as farm:
        rows = farm.report(since=since)
    if as_json:
        click.echo(json.dumps([json.loads(r.model_dump_json()) for r in rows], indent=2))
    else:
        click.echo(table(rows))


COMMANDS = (submit, status, wait, cancel, report)
