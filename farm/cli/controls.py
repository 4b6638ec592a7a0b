"""Operator controls: `farm limits`, `farm throttle`, `farm pause`, `farm resume` and
`farm hold` (registered on the `farm` command by farm.cli.main).

They act on the same Redis state every worker reads (farm.capacity), so they
take effect across the cluster at once, with no restart.
"""

from __future__ import annotations

import json
from typing import Any

import click

from farm.capacity.limits import NothingToThrottle
from farm.cli.context import capacity, farm_client, redis_client, settings_of
from farm.settings import Settings
from farm.store.jobs import HELD, LIMITS, limited
from farm.store.jobs import paused as paused_reason


def _known_models(settings: Settings, seen: list[str]) -> list[str]:
    models = {q.model for q in settings.queues}
    models |= {q.fallback_model for q in settings.queues if q.fallback_model}
    return sorted(models | set(settings.limits) | set(seen))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.1f}"
    return str(value)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def limits(ctx: click.Context, as_json: bool) -> None:
    """Configured and effective limits, current use and circuit state, per model."""
    settings = settings_of(ctx)
    with capacity(ctx) as (limiter, breaker):
        rows = []
        for model in _known_models(settings, limiter.models()):
            snap = limiter.snapshot(model)
            snap["circuit"] = breaker.state(model)
            rows.append({"model": model, **snap})
        paused = sorted(limiter.paused_queues())
    if as_json:
        click.echo(json.dumps({"models": rows, "paused_queues": paused}, default=str, indent=2))
        return
    click.echo(f"{'model':<22} {'limit':<6} {'configured':>11} {'effective':>11} "
               f"{'bucket':>9} {'left now':>10}  in-flight  throttle  circuit")
    for row in rows:
        circuit = row["circuit"]
        state = circuit["state"]
        if state != "closed" and circuit.get("cooldown_remaining_s"):
            state += f" ({circuit['cooldown_remaining_s']:.0f}s)"
        paused_for = row.get("paused_for_s") or 0.0
        note = f"  paused {paused_for:.0f}s (429)" if paused_for > 0 else ""
        throttled = row.get("throttle_percent")
        throttled = "-" if throttled is None else f"{throttled:g}%"
        for i, kind in enumerate(("rpm", "itpm", "otpm", "max_concurrency")):
            head = row["model"] if i == 0 else ""
            tail = (f"  {row.get('in_flight', 0):>9}  {throttled:>8}  {state}{note}"
                    if i == 0 else "")
            label = "slots" if kind == "max_concurrency" else kind
            click.echo(f"{head:<22} {label:<6} {_fmt(row['configured'].get(kind)):>11} "
                       f"{_fmt(row['effective'].get(kind)):>11} "
                       f"{_fmt(row.get('bucket', {}).get(kind)):>9} "
                       f"{_fmt(row.get('levels', {}).get(kind)):>10}{tail}")
    click.echo(f"paused queues: {', '.join(paused) or 'none'}")


@click.command()
@click.argument("model")
@click.argument("percent")
@click.pass_context
def throttle(ctx: click.Context, model: str, percent: str) -> None:
    """Emergency throttle: use only PERCENT (1-100) of MODEL's limits; `off` (or 100)
    lifts it. A model with no limits is held to PERCENT of its recent request rate
    (refused if it made no calls lately: there is nothing to take a percent of)."""
    value: float | None
    if percent.lower() in {"off", "none", "100"}:
        value = None
    else:
        try:
            value = float(percent.rstrip("%"))
        except ValueError:
            raise click.BadParameter(f"PERCENT must be 1-100 or off, not {percent!r}") from None
        if not 0 < value <= 100:
            raise click.BadParameter(f"PERCENT must be 1-100 or off, not {percent!r}")
    settings = settings_of(ctx)
    with capacity(ctx) as (limiter, _):
        seen = limiter.models()
        callable_models = _known_models(settings, [])
        if value is not None and model not in callable_models:
            raise click.BadParameter(f"unknown model {model!r}: no queue, fallback or limit "
                                     f"names it; known: {', '.join(callable_models)}")
        if value is None and model not in {*callable_models, *seen}:
            raise click.BadParameter(f"unknown model {model!r}: it has no throttle to lift")
        before = limiter.snapshot(model)["throttle_percent"]
        try:
            base = limiter.throttle(model, value)
        except NothingToThrottle as exc:
            raise click.ClickException(
                f"{exc}; set its limits in FARM_LIMITS, or `farm pause` its queue") from None
        rpm = limiter.snapshot(model)["effective"]["rpm"]
    woken = ""
    if before is not None and (value is None or value > before):
        # jobs deferred under the tighter throttle run now, not at their next look
        with farm_client(ctx) as farm:
            count = sum(farm.wake(limited(model, kind)) for kind in LIMITS)
        woken = f"; {count} waiting job(s) sent back to the workers now"
    if value is None:
        click.echo(f"{model}: throttle lifted{woken}")
    elif base is None:
        click.echo(f"{model}: throttled to {value:g}% of its limits on every worker{woken}")
    else:
        click.echo(f"{model}: throttled to {value:g}% of its recent {base:.0f} calls a minute "
                   f"(it has no limits): at most {rpm:.3g} a minute on all workers together"
                   f"{woken}")


def _set_paused(ctx: click.Context, queue: str, paused: bool) -> None:
    known = settings_of(ctx).servable_queues
    if queue not in known:
        raise click.BadParameter(f"unknown queue {queue!r}; known: {', '.join(known)}")
    with capacity(ctx) as (limiter, _):
        (limiter.pause_queue if paused else limiter.resume_queue)(queue)


@click.command()
@click.argument("queue")
@click.pass_context
def pause(ctx: click.Context, queue: str) -> None:
    """Pause QUEUE: its jobs stay queued (no attempt used, nothing called) until resumed."""
    _set_paused(ctx, queue, True)
    click.echo(f"{queue}: paused on every worker (`farm resume {queue}` to resume)")


@click.command()
@click.argument("queue")
@click.pass_context
def resume(ctx: click.Context, queue: str) -> None:
    """Resume a paused QUEUE: its waiting jobs run now, not at their next look."""
    _set_paused(ctx, queue, False)
    with farm_client(ctx) as farm:
        woken = farm.wake(paused_reason(queue), queue)
    click.echo(f"{queue}: resumed; {woken} waiting job(s) sent back to the workers now")


@click.command()
@click.option("--release", is_flag=True, help="Lift the hold: held jobs run again.")
@click.pass_context
def hold(ctx: click.Context, release: bool) -> None:
    """Show (or --release) the farm-wide hold set when the spend limit is reached."""
    from farm.reliability import hold as farm_hold

    with redis_client(ctx) as client:
        if release:
            released = farm_hold.release(client)
            if not released:
                click.echo("the farm was not held")
                return
            with farm_client(ctx) as farm:
                woken = farm.wake(HELD)
            click.echo(f"released: {woken} held job(s) sent back to the workers now")
            return
        state = farm_hold.current(client)
    click.echo("not held" if state is None else f"HELD: {state.get('reason')}")


COMMANDS = (limits, throttle, pause, resume, hold)
