"""What every `farm` command shares: the settings built once by the group (``ctx.obj``),
and clients of the farm made from them, with one-line errors instead of tracebacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from farm.settings import Settings

if TYPE_CHECKING:
    from farm.capacity.breaker import Breaker
    from farm.capacity.limiter import Limiter
    from farm.client import Farm


def settings_of(ctx: click.Context) -> Settings:
    """The settings the `farm` group built for this invocation."""
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


@contextmanager
def redis_client(ctx: click.Context, timeout_s: float | None = None) -> Iterator[Any]:
    """A client of the farm's Redis, where every worker reads the operator controls;
    ``timeout_s`` bounds each command and connection (None: redis-py's, none)."""
    import redis

    from farm.services import resolve_urls

    try:
        broker_url = resolve_urls(settings_of(ctx)).broker_url
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    client = redis.Redis.from_url(broker_url, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def capacity(ctx: click.Context) -> Iterator[tuple[Limiter, Breaker]]:
    """The cluster's limiter and breakers, on the Redis state every worker shares."""
    from farm.capacity.build import redis_breaker, redis_limiter

    with redis_client(ctx) as client:
        settings = settings_of(ctx)
        yield redis_limiter(client, settings), redis_breaker(client, settings)


def farm_client(ctx: click.Context) -> Farm:
    """The Python API's handle on the farm (close it, or use it as a context manager)."""
    from farm.client import Farm

    try:
        return Farm(settings_of(ctx))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
