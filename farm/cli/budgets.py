"""`farm budget set|list|rm`: spend budgets of the farm, a tenant, a queue or a model, per
hour, day or calendar month (UTC). Hard budgets stop calls at their limit (the jobs wait or
fail, as the budget says); soft ones alert. See farm.costs.budgets and farm.costs.controls."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation

import click
from pydantic import ValidationError

from farm.cli.context import farm_client
from farm.costs.controls import BudgetView
from farm.costs.money import usd
from farm.jobs import describe_problems


@click.group()
def budget() -> None:
    """Spend budgets: set, list, rm."""


def _usd(ctx: click.Context, param: click.Parameter, value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not an amount of USD (e.g. 50 or 12.5)",
                                 ctx, param) from None
    if not amount.is_finite() or amount <= 0:
        raise click.BadParameter(f"{value} must be a positive amount of USD", ctx, param)
    return amount


@budget.command("set")
@click.option("--global", "whole", is_flag=True, help="The whole farm.")
@click.option("--tenant", default=None)
@click.option("--queue", default=None)
@click.option("--model", default=None)
@click.option("--usd", "amount", required=True, callback=_usd, help="The limit, in USD.")
@click.option("--period", type=click.Choice(["hour", "day", "month"]), default="day",
              show_default=True, help="UTC hour, day or calendar month.")
@click.option("--soft", type=click.FloatRange(0, 1, min_open=True), default=None,
              metavar="SHARE", help="A soft budget: never blocks, alerts at SHARE (0.8).")
@click.option("--alert-at", type=click.FloatRange(0, 1, min_open=True), default=None,
              metavar="SHARE", help="A hard budget's early alert, at SHARE of the limit.")
@click.option("--on-exceed", type=click.Choice(["wait", "fail"]), default="wait",
              show_default=True, help="At the limit, jobs wait (no call, no attempt used) "
              "or fail as budget_exceeded into the dead-letter queue.")
@click.pass_context
def set_budget(ctx: click.Context, whole: bool, tenant: str | None, queue: str | None,
               model: str | None, amount: Decimal, period: str, soft: float | None,
               alert_at: float | None, on_exceed: str) -> None:
    """Create or change a budget: --global, --tenant T, --queue Q or --model M."""
    chosen = [name for name, given in (("--global", whole), ("--tenant", tenant),
                                       ("--queue", queue), ("--model", model)) if given]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --global, --tenant, --queue, --model")
    with farm_client(ctx) as farm:
        try:
            made, woken = farm.budgets.set(tenant=tenant, queue=queue, model=model,
                                           usd=amount, period=period, soft=soft,
                                           alert_at=alert_at, on_exceed=on_exceed)
        except ValueError as exc:  # pydantic's ValidationError too
            problem = describe_problems(exc) if isinstance(exc, ValidationError) else str(exc)
            raise click.ClickException(f"budget not set: {problem}") from None
        view = farm.budgets.view(made)
    click.echo(f"{made.id}: {made.describe()}")
    click.echo(_line(view))
    if woken:
        click.echo(f"{woken} job(s) waiting for it sent back to the workers now")


def _line(v: BudgetView) -> str:
    return (f"  {v.period}: spent {usd(v.spent_usd)}, reserved {usd(v.reserved_usd)}, "
            f"remaining {usd(v.remaining_usd)} of {usd(v.budget.limit_usd)} "
            f"({v.used:.0%} used){'  ALERT' if v.alerting else ''}")


@budget.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_budgets(ctx: click.Context, as_json: bool) -> None:
    """Every budget with its current period: limit, spent, reserved and remaining."""
    with farm_client(ctx) as farm:
        views = farm.budgets.list()
    if as_json:
        click.echo(json.dumps([json.loads(v.model_dump_json()) for v in views], indent=2))
        return
    if not views:
        click.echo("no budgets (`farm budget set --tenant T --usd 50 --period day`)")
        return
    head = (f"{'budget':<32}{'mode':<6}{'period':<15}{'limit':>12}{'spent':>12}"
            f"{'reserved':>12}{'remaining':>12}{'used':>7}  at limit")
    click.echo(head)
    click.echo("-" * len(head))
    for v in views:
        b = v.budget
        act = "alert" if b.mode.value == "soft" else b.on_exceed.value
        click.echo(f"{b.id:<32}{b.mode.value:<6}{v.period:<15}{usd(b.limit_usd):>12}"
                   f"{usd(v.spent_usd):>12}{usd(v.reserved_usd):>12}"
                   f"{usd(v.remaining_usd):>12}{v.used:>7.0%}  {act}"
                   f"{'  ALERT' if v.alerting else ''}")


@budget.command("rm")
@click.argument("budget_id")
@click.pass_context
def remove_budget(ctx: click.Context, budget_id: str) -> None:
    """Remove a budget (its id as `farm budget list` shows it); its waiting jobs run."""
    with farm_client(ctx) as farm:
        found, woken = farm.budgets.remove(budget_id)
        known = [v.budget.id for v in farm.budgets.list()] if not found else []
    if not found:
        raise click.ClickException(f"no budget {budget_id!r}; budgets: "
                                   f"{', '.join(known) or 'none'}")
    click.echo(f"{budget_id}: removed; {woken} job(s) waiting for it sent back to the workers")


COMMANDS = (budget,)
