"""Jobs from the command line: `farm submit`, `farm status`, `farm wait`, `farm cancel`
and `farm jobs` (registered on the `farm` command by farm.cli.main; `farm report` is in
farm.cli.reports)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from click.core import ParameterSource

from farm.cli import parsing, render
from farm.cli.context import farm_client
from farm.jobs import JobStatus


def _metadata(ctx: click.Context, param: click.Parameter, items: tuple[str, ...],
              ) -> dict[str, str]:
    try:
        return parsing.metadata(items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command()
@click.option("--prompt", help="The user prompt.")
@click.option("--prompt-file", type=click.Path(exists=True, dir_okay=False, allow_dash=True),
              help="Read the prompt from a file ('-': standard input).")
@click.option("--system", default=None)
@click.option("--complexity", type=click.Choice(["auto", "simple", "complex"]), default="auto")
@click.option("--model", default=None)
@click.option("--queue", default=None, help="Run on this queue (its model, unless --model).")
@click.option("--max-tokens", type=int, default=1024)
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default="normal")
@click.option("--tenant", default="default")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", callback=_metadata,
              help="A metadata entry (repeat for more).")
@click.option("--max-cost-usd", default=None, metavar="USD",
              help="The most this job may cost (default: its tenant's, its queue's, the "
                   "farm's); a job whose one call can cost more is refused.")
@click.option("--allow-fallback", is_flag=True,
              help="While the model's circuit is open, run on the queue's fallback model.")
@click.option("--batch/--no-batch", default=None,
              help="Wait for a Message Batch (half price, answered within 24 h), or never; "
                   "default: the queue's policy, or a far deadline.")
@click.option("--memo/--no-memo", default=None,
              help="Reuse the answer of an identical earlier job of the tenant (cost 0), or "
                   "never; default: the tenant's or the queue's policy.")
@click.option("--memo-ttl-s", type=click.IntRange(1), default=None, metavar="SECONDS",
              help="How old a reused answer may be (default FARM_MEMO_TTL_S).")
@click.option("--cache", type=click.Choice(["off", "5m", "1h"]), default=None,
              help="Prompt caching of the long stable prefix (default: the queue's, else "
                   "FARM_PROMPT_CACHE).")
@click.option("--idempotency-key", default=None, metavar="KEY",
              help="Submitting again with the same key (per tenant) prints the same job id "
                   "and enqueues nothing; with a different job it is an error.")
@click.option("--file", "path", type=click.Path(dir_okay=False, allow_dash=True),
              help="JSONL: one job per line, with the Python API's field names.")
@click.option("--dry-run", is_flag=True,
              help="Enqueue nothing: print each job's route, worst-case, expected cost and "
                   "cap, and the totals (a job over its cap is an error, as in a submit).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def submit(ctx: click.Context, /, prompt: str | None, prompt_file: str | None,
           path: str | None, dry_run: bool, as_json: bool, **fields: Any) -> None:
    """Submit one job (--prompt TEXT or --prompt-file PATH) or many (--file jobs.jsonl)."""
    from farm.client import InvalidJobError
    from farm.reliability.idempotency import IdempotencyConflictError

    if sum(x is not None for x in (prompt, prompt_file, path)) != 1:
        raise click.UsageError("give exactly one of --prompt, --prompt-file or --file")
    if path is not None:
        given = [f"--{name.replace('_', '-')}" for name in fields
                 if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"{', '.join(given)}: with --file, each job's fields come "
                                   "from its line")
        lines = _read_jsonl(path)
        jobs = [job for _, job in lines]

        def where(index: int) -> str:
            return f"{path}:{lines[index][0]}: "
    else:
        text = prompt if prompt_file is None else _read_prompt(prompt_file)
        jobs = [{k: v for k, v in {**fields, "prompt": text}.items() if v is not None}]

        def where(index: int) -> str:
            return ""
    if dry_run:
        names = [f"line {n}" for n, _ in lines] if path is not None else []
        _dry_run(ctx, jobs, names, where, as_json)
        return
    with farm_client(ctx) as farm:
        try:
            ids = farm.submit_many(jobs)
        except InvalidJobError as exc:
            raise click.ClickException(render.invalid_jobs(exc.problems, where)) from None
        except IdempotencyConflictError as exc:  # the first job with the key says where
            first = next((i for i, job in enumerate(jobs) if job.get("idempotency_key")
                          == exc.key and job.get("tenant", "default") == exc.tenant), None)
            raise click.ClickException(f"{'' if first is None else where(first)}{exc}"
                                       ) from None
    if as_json:
        click.echo(json.dumps({"job_ids": [str(i) for i in ids]}))
    else:
        click.echo("\n".join(str(i) for i in ids))


def _dry_run(ctx: click.Context, jobs: list[Any], names: list[str],
             where: Callable[[int], str], as_json: bool) -> None:
    """`farm submit --dry-run`: the estimates, printed; a job over its cap fails the command
    after them, as a submit would refuse it."""
    from farm.client import InvalidJobError
    from farm.costs.forecast import render as table

    with farm_client(ctx) as farm:
        try:
            estimates = farm.estimate(jobs)
        except InvalidJobError as exc:
            raise click.ClickException(render.invalid_jobs(exc.problems, where)) from None
    click.echo(estimates.model_dump_json(indent=2) if as_json else table(estimates, names))
    if estimates.problems:
        raise click.ClickException(render.invalid_jobs(estimates.problems, where))


def _read_prompt(path: str) -> str:
    try:
        with click.open_file(path, "r", encoding="utf-8") as stream:
            return str(stream.read())
    except UnicodeDecodeError:
        where = "standard input" if path == "-" else path
        raise click.ClickException(f"--prompt-file: {where} is not UTF-8 text") from None


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
    """Cancel a queued or running job (a finished one is an error: exit status 1)."""
    with farm_client(ctx) as farm:
        try:
            click.echo(farm.cancel(job_id, strict=True).value)
        except (KeyError, ValueError) as exc:
            raise click.ClickException(str(exc).strip("'")) from None


def _since(ctx: click.Context, param: click.Parameter, text: str | None) -> datetime | None:
    try:
        return None if text is None else parsing.since(text, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command("jobs")
@click.option("--tenant", default=None)
@click.option("--status", "statuses", multiple=True,
              type=click.Choice([s.value for s in JobStatus]), help="Repeat for several.")
@click.option("--queue", default=None)
@click.option("--since", callback=_since, metavar="WHEN",
              help="Hours back (6, 1.5), a duration (30m, 2h, 7d) or an ISO time (UTC "
                   "unless it has an offset).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_list(ctx: click.Context, tenant: str | None, statuses: tuple[str, ...],
              queue: str | None, since: datetime | None, limit: int, as_json: bool) -> None:
    """Jobs, newest first, filtered by tenant, status, queue and creation time."""
    with farm_client(ctx) as farm:
        views = farm.jobs(tenant=tenant, status=statuses, queue=queue, since=since,
                          limit=limit)
    if as_json:
        click.echo(json.dumps([_view_dict(v) for v in views], indent=2))
        return
    if views:
        click.echo("\n".join(render.jobs_table(views)))
    more = f" (the newest {limit}; --limit for more)" if len(views) == limit else ""
    click.echo(f"{len(views)} job(s){more}")


COMMANDS = (submit, status, wait, cancel, jobs_list)
