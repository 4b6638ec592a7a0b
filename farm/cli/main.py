"""The `farm` command: services, migrations, workers, the simulator and Flower; the jobs',
dead letters' and operator controls' commands are registered from their modules."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import click

from farm.cli import batches, budgets, controls, dlq, jobs, observe, reports, router, workers
from farm.cli.context import settings_of
from farm.cli.errors import FarmGroup
from farm.settings import Settings


@click.group(cls=FarmGroup)
@click.version_option(package_name="farm", prog_name="farm", message="%(prog)s %(version)s")
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
    from sqlalchemy.engine import make_url

    endpoints = services.up(settings.data_dir)
    broker = endpoints.broker_url.split("@", 1)[-1]
    database = make_url(endpoints.database_url).render_as_string(hide_password=True)
    click.echo(f"broker   redis://{broker.removeprefix('redis://')}\ndatabase {database}\n"
               f"(passwords in {settings.data_dir / services.STATE_FILE}, readable by you "
               "only; every farm process reads them from there)")


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
    from alembic.util import CommandError

    from farm.store.migrate import describe, head_revision, upgrade

    try:
        before, after = upgrade(settings_of(ctx))
    except CommandError as exc:  # e.g. a database at a revision this code does not know
        raise click.ClickException(f"cannot migrate: {exc}") from None
    click.echo(describe(before, after, head_revision()))


@main.command()
@click.option("--queue", "-Q", "queues", multiple=True, help="Queue(s) to consume.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 2000), default=None)
@click.option("--pool", "-P", type=click.Choice(["threads", "gevent", "prefork", "solo"]))
@click.option("--loglevel", "-l", default="INFO")
@click.pass_context
def worker(ctx: click.Context, queues: tuple[str, ...], concurrency: int | None,
           pool: str | None, loglevel: str) -> None:
    """Run a Celery worker (same as `celery -A farm worker`): -c threads (default
    FARM_WORKER_CONCURRENCY), of which its elastic slots (FARM_SLOTS) use between min and
    max."""
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
    threads = concurrency or settings.worker_concurrency
    try:  # the worker would refuse to start; say why here
        settings.slot_policy(names.split(","), threads)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    from farm.worker.command import worker_argv

    argv = worker_argv(names, concurrency=threads, pool=pool or settings.worker_pool,
                       loglevel=loglevel)
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
@click.option("--burst-s", "burst_s", type=click.FloatRange(0, 60, min_open=True), default=None,
              help="Enforce the limits over this many seconds: buckets of burst_s/60 of "
                   "the per-minute limit (default: full-minute buckets).")
@click.option("--fault-529", "fault_529_rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--fault-500", "fault_500_rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--seed", type=int, default=0)
@click.option("--batch-processing-s", "batch_processing_s", type=click.FloatRange(min=0),
              default=2.0, show_default=True,
              help="A Message Batch ends this many seconds after its creation.")
@click.pass_context
def sim(ctx: click.Context, /, port: int | None, **options: Any) -> None:
    """Serve the simulated Claude Messages API (for demos, tests and benchmarks)."""
    from farm.sim.server import SimConfig, run

    run(SimConfig(port=port or settings_of(ctx).sim_port, **options))


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
    from farm.services import resolve_urls

    try:
        broker_url = settings.broker_url or resolve_urls(settings).broker_url
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    # `celery -A farm flower`, listing the dead-letter queue too (farm.cli.flower)
    argv = [sys.executable, "-m", "farm.cli.flower",
            f"--port={port or settings.flower_port}", "--address=127.0.0.1"]
    os.execvpe(argv[0], argv, flower_env(settings, os.environ, broker_url))


# What Flower's process gets of the environment: the system's and Python's basics, Flower's
# own options (FLOWER_*), and of the farm's only what builds its Celery app (the broker, the
# queues). No API key, no database URL, no FARM_FLOWER_PASSWORD: what Flower is not given,
# it cannot show or leak.
FLOWER_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ",
                              "TMPDIR", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR",
                              "FARM_DATA_DIR", "FARM_QUEUES"})
FLOWER_ENV_PREFIXES = ("LC_", "PYTHON", "FLOWER_")


def flower_env(settings: Settings, environ: Mapping[str, str], broker_url: str
               ) -> dict[str, str]:
    """Flower's environment: what it needs and nothing else. Its credentials are given
    here as FLOWER_BASIC_AUTH, never on the command line (visible in `ps`)."""
    env = {name: value for name, value in environ.items()
           if name in FLOWER_ENV_NAMES or name.startswith(FLOWER_ENV_PREFIXES)}
    assert settings.flower_password is not None
    password = settings.flower_password.get_secret_value()
    env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{password}"
    env["FARM_BROKER_URL"] = broker_url  # resolved: Flower needs no database to find it
    return env


for _command in (*jobs.COMMANDS, *reports.COMMANDS, dlq.dlq, *controls.COMMANDS,
                 *budgets.COMMANDS, *router.COMMANDS,
                 *observe.COMMANDS, *workers.COMMANDS, *batches.COMMANDS):
    main.add_command(_command)

if __name__ == "__main__":
    main()
