"""What the `farm` command says when the world is not as it needs it: one line naming the
problem (an unreachable database or broker, a schema not migrated, a busy port, a missing
file, a submit cut short) instead of a traceback. Pure: it only reads the exception."""

from __future__ import annotations

import errno
from typing import Any

import click


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def explain(exc: BaseException) -> str | None:
    """One line for an exception the CLI expects from its surroundings; None for the rest
    (a bug: its traceback is what a developer needs)."""
    from kombu.exceptions import OperationalError as BrokerError
    from psycopg import errors as pg
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout
    from sqlalchemy import exc as sa_exc

    from farm.client import SubmitError

    if isinstance(exc, SubmitError):
        return f"submit cut short: {exc}"
    # the job statements run on psycopg (farm.store.db), the reports on SQLAlchemy
    if isinstance(exc, pg.UndefinedTable | sa_exc.ProgrammingError) and (
            "does not exist" in str(getattr(exc, "orig", None) or exc)):
        return (f"the database has no farm schema ({_first_line(exc)}): "
                "run `farm migrate` (`make migrate`)")
    if isinstance(exc, pg.OperationalError | pg.InterfaceError | sa_exc.OperationalError
                  | sa_exc.InterfaceError):
        return f"cannot reach the database: {_first_line(exc)}"
    if isinstance(exc, BrokerError | RedisConnectionError | RedisTimeout):
        return f"cannot reach the broker (Redis): {_first_line(exc)}"
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"{_first_line(exc)}: another process listens there; pick another --port"
    return None


class FarmGroup(click.Group):
    """The `farm` group: expected failures end with one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException:
            raise
        except Exception as exc:
            message = explain(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None
