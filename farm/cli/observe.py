"""Watching the farm: `farm alerts`, `farm exporter` and `farm top` (registered on the
`farm` command by farm.cli.main). Each reads Redis and Postgres only; none writes."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from farm.cli.context import settings_of
from farm.observe.evaluate import evaluate
from farm.observe.figures import Snapshot
from farm.observe.rules import thresholds

log = logging.getLogger("farm.exporter")
TIMEOUT_S = 5.0  # each Redis command and Postgres connection of a snapshot


@contextmanager
def sources(ctx: click.Context) -> Iterator[tuple[Any, Any]]:
    """(Redis client, Postgres connections) of the farm, with short timeouts: a snapshot
    ends in bounded time even when a service hangs."""
    import redis

    from farm.services import resolve_urls
    from farm.store.db import Database

    try:
        urls = resolve_urls(settings_of(ctx))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    client = redis.Redis.from_url(urls.broker_url, socket_timeout=TIMEOUT_S,
                                  socket_connect_timeout=TIMEOUT_S)
    db = Database(urls.database_url, size=2, timeout_s=TIMEOUT_S,
                  connect_timeout_s=max(1, int(TIMEOUT_S)))
    try:
        yield client, db
    finally:
        client.close()
        db.close()


def _snapshot(ctx: click.Context, client: Any, db: Any) -> Snapshot:
    from farm.observe.snapshot import take_for

    return take_for(settings_of(ctx), client, db)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The firing alerts as JSON.")
@click.pass_context
def alerts(ctx: click.Context, as_json: bool) -> None:
    """The alerts firing now (the rules of ops/prometheus/farm-alerts.yml on a snapshot),
    with value and threshold. Exit status 0 whether or not any fires."""
    t = thresholds(settings_of(ctx))
    with sources(ctx) as (client, db):
        snap = _snapshot(ctx, client, db)
    result = evaluate(snap, t, snap.taken_at)
    if as_json:
        click.echo(json.dumps({"firing": [a.as_json() for a in result.firing],
                               "problems": list(snap.problems)}, indent=2))
        return
    for a in result.firing:
        labels = "".join(f" {k}={v}" for k, v in a.labels)
        click.echo(f"FIRING {a.name}{labels} [{a.rule.severity.value}]: {a.summary}")
    for problem in snap.problems:
        click.echo(f"warning: {problem}", err=True)
    if not result.firing:
        click.echo("no alert firing")


def _webhook_loop(take: Any, url: str, every_s: float, t: Any, stop: threading.Event
                  ) -> None:
    from farm.observe.webhook import Notifier, post

    notifier = Notifier(t)
    while not stop.is_set():
        try:
            snap = take()
            body = notifier.step(snap, snap.taken_at)
            if body is not None:
                post(url, body)
                log.info("webhook: %s, %d alert(s)", body["status"], len(body["alerts"]))
        except Exception as exc:  # keep serving metrics; say what went wrong, once a round
            log.warning("webhook round failed: %s: %s", type(exc).__name__, exc)
        stop.wait(every_s)


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--webhook", help="POST firing/resolved alerts here (Alertmanager's format).")
@click.option("--every", "every_s", type=click.FloatRange(0.1, 3600), default=15.0,
              show_default=True, help="Seconds between the webhook's evaluations.")
@click.pass_context
def exporter(ctx: click.Context, port: int, host: str, webhook: str | None,
             every_s: float) -> None:
    """Serve the cluster metrics (queue depth, oldest wait, jobs by status, circuits,
    limiter use, hold, budgets, cost breakers) on http://HOST:PORT/metrics, a fresh
    snapshot each scrape."""
    from prometheus_client import CollectorRegistry, start_http_server

    from farm.observe.exporter import ClusterCollector

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if webhook and not webhook.startswith(("http://", "https://")):
        raise click.BadParameter("--webhook must be an http:// or https:// URL")
    with sources(ctx) as (client, db):
        def take() -> Snapshot:
            return _snapshot(ctx, client, db)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(ClusterCollector(take))
        server, thread = start_http_server(port, addr=host, registry=registry)
        click.echo(f"farm exporter on http://{host}:{port}/metrics", err=True)
        stop = threading.Event()
        if webhook:
            threading.Thread(target=_webhook_loop, name="webhook", daemon=True,
                             args=(take, webhook, every_s, thresholds(settings_of(ctx)),
                                   stop)).start()
        try:
            while thread.is_alive():
                thread.join(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            server.shutdown()


@click.command()
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--every", "every_s", type=click.FloatRange(0.5, 3600), default=2.0,
              show_default=True)
@click.pass_context
def top(ctx: click.Context, once: bool, every_s: float) -> None:
    """A live view: throughput, P50/P95/P99, errors, queues, utilisation, cost per hour,
    circuits, hold and the alerts firing."""
    from rich.console import Console
    from rich.live import Live

    from farm.observe.top import frame

    t = thresholds(settings_of(ctx))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or a file: rows whole, not cut at 80 columns
    with sources(ctx) as (client, db):
        def render() -> Any:
            snap = _snapshot(ctx, client, db)
            return frame(snap, evaluate(snap, t, snap.taken_at))

        if once:
            console.print(render())
            return
        with Live(render(), console=console, refresh_per_second=4, screen=False) as live:
            try:
                while True:
                    time.sleep(every_s)
                    live.update(render())
            except KeyboardInterrupt:
                pass


COMMANDS = (alerts, exporter, top)
