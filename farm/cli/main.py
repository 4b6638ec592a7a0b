"""The `farm` command: services, migrations, workers, simulator, jobs and reports."""

from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from farm.cli.context import farm_client, settings_of
from farm.cli.controls import COMMANDS
from farm.settings import Settings


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """farm: an LLM task farm on Celery."""
    try:
        ctx.obj = Settings()
    except Exception as exc:  # pydantic's message names the bad variable
        raise click.ClickException(f"bad configuration: {exc}") from None


@main.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Start (or reuse) the embedded Valkey and PostgreSQL under FARM_DATA_DIR."""
    from farm import services

    settings = settings_of(ctx)
    if settings.broker_url and settings.database_url:
        click.echo("FARM_BROKER_URL and FARM_DATABASE_URL are set: nothing embedded to start")
        return
    endpoints = services.up(settings.data_dir)
    click.echo(f"broker   {endpoints.broker_url}\ndatabase {endpoints.database_url}")


@main.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop the embedded services."""
    from farm import services

    stopped = services.down(settings_of(ctx).data_dir)
    click.echo("stopped: " + (", ".join(stopped) or "nothing was running"))


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the Postgres schema (Alembic)."""
    from farm.store.migrate import upgrade

    upgrade(settings_of(ctx))
    click.echo("database schema is up to date")


@main.command()
@click.option("--queue", "-Q", "queues", multiple=True, help="Queue(s) to consume.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 2000), default=None)
@click.option("--pool", "-P", type=click.Choice(["threads", "gevent", "prefork", "solo"]))
@click.option("--loglevel", "-l", default="INFO")
@click.pass_context
def worker(ctx: click.Context, queues: tuple[str, ...], concurrency: int | None,
           pool: str | None, loglevel: str) -> None:
    """Run a Celery worker (same as `celery -A farm worker`)."""
    settings = settings_of(ctx)
    if settings.anthropic_api_key is None:
        raise click.ClickException(
            "ANTHROPIC_API_KEY is not set: a worker needs it to call the Claude API "
            "(for the simulator, any value and ANTHROPIC_BASE_URL=http://127.0.0.1:8787)"
        )
    known = settings.servable_queues
    queues = tuple(n.strip() for q in queues for n in q.split(",") if n.strip())
    for name in queues:
        if name not in known:
            raise click.ClickException(f"unknown queue {name!r}; known: {', '.join(known)}")
    names = ",".join(queues or known)
    from farm.worker.command import worker_argv

    argv = worker_argv(names, concurrency=concurrency or settings.worker_concurrency,
                       pool=pool or settings.worker_pool, loglevel=loglevel)
    os.execvp(argv[0], argv)


@main.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, default=None)
@click.option("--latency", "fixed_latency_s", type=float, default=None,
              help="Fixed latency of every call, seconds (default: ttft + tokens/speed).")
@click.option("--ttft", "ttft_s", type=float, default=0.2)
@click.option("--tokens-per-s", "output_tokens_per_s", type=float, default=200.0)
@click.option("--rpm", "rpm_limit", type=int, default=None)
@click.option("--itpm", "itpm_limit", type=int, default=None)
@click.option("--otpm", "otpm_limit", type=int, default=None)
@click.option("--fault-529", "fault_529_rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--fault-500", "fault_500_rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--seed", type=int, default=0)
@click.pass_context
def sim(ctx: click.Context, /, port: int | None, **options: Any) -> None:
    """Serve the simulated Claude Messages API (for demos, tests and benchmarks)."""
    from farm.sim.server import SimConfig, run

    run(SimConfig(port=port or settings_of(ctx).sim_port, **options))


@main.command()
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
        jobs = _read_jsonl(path)
    else:
        jobs = [{k: v for k, v in {**fields, "prompt": prompt}.items() if v is not None}]
    with farm_client(ctx) as farm:
        try:
            ids = farm.submit_many(jobs)
        except InvalidJobError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"job_ids": [str(i) for i in ids]}))
    else:
        click.echo("\n".join(str(i) for i in ids))


def _read_jsonl(path: str) -> list[dict[str, Any]]:
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
            jobs.append(item)
    if not jobs:
        raise click.ClickException(f"{path}: no jobs")
    return jobs


def _view_dict(view: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(view.model_dump_json())
    return data


@main.command()
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
    data = _view_dict(view)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            click.echo(f"{key:<28}{value}")


@main.command()
@click.argument("job_ids", nargs=-1, required=True, type=click.UUID)
@click.option("--timeout", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def wait(ctx: click.Context, job_ids: tuple[uuid.UUID, ...], timeout: float | None,
         as_json: bool) -> None:
    """Wait until the jobs are finished; print their results."""
    with farm_client(ctx) as farm:
        try:
            views = farm.wait(list(job_ids), timeout=timeout)
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from None
        except ValueError as exc:
            raise click.ClickException(f"bad job id: {exc}") from None
    if as_json:
        click.echo(json.dumps([_view_dict(v) for v in views], indent=2))
    else:
        for v in views:
            click.echo(f"{v.id} {v.status.value} {v.served_model or v.model} "
                       f"cost={v.cost_usd} {(v.response_text or v.error or '')[:80]!r}")
    if any(v.status.value != "succeeded" for v in views):
        sys.exit(1)


@main.command()
@click.argument("job_id", type=click.UUID)
@click.pass_context
def cancel(ctx: click.Context, job_id: uuid.UUID) -> None:
    """Cancel a queued or running job."""
    with farm_client(ctx) as farm:
        try:
            click.echo(farm.cancel(job_id).value)
        except (KeyError, ValueError) as exc:
            raise click.ClickException(str(exc).strip("'")) from None


@main.command()
@click.option("--since-hours", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def report(ctx: click.Context, since_hours: float | None, as_json: bool) -> None:
    """Cost report per queue and model: jobs, tokens, cost, latency, errors."""
    from farm.costs.reports import render

    since = None
    if since_hours is not None:
        since = datetime.now(UTC) - timedelta(hours=since_hours)
    with farm_client(ctx) as farm:
        rows = farm.report(since=since)
    if as_json:
        click.echo(json.dumps([json.loads(r.model_dump_json()) for r in rows], indent=2))
    else:
        click.echo(render(rows))


@main.group()
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


@main.command()
@click.option("--port", type=int, default=None)
@click.pass_context
def flower(ctx: click.Context, port: int | None) -> None:
    """Run Flower on the farm's broker, behind basic auth."""
    settings = settings_of(ctx)
    if not settings.flower_user or settings.flower_password is None:
        raise click.ClickException(
            "Flower needs credentials: set FARM_FLOWER_USER and FARM_FLOWER_PASSWORD"
        )
    env = dict(os.environ)
    # given through the environment, never on the command line (visible in `ps`)
    password = settings.flower_password.get_secret_value()
    env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{password}"
    # `celery -A farm flower`, listing the dead-letter queue too (farm.cli.flower)
    argv = [sys.executable, "-m", "farm.cli.flower",
            f"--port={port or settings.flower_port}", "--address=127.0.0.1"]
    os.execvpe(argv[0], argv, env)


for _command in COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()
