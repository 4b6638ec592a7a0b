"""The per-job cost cap at submit (farm.costs.admit) and the estimates' figures
(farm.costs.forecast): pure, no services."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from farm.client import InvalidJobError, validate
from farm.costs import forecast
from farm.costs.admit import check_cost_cap, dearest_call, job_cap
from farm.costs.pricing import default_pricebook
from farm.jobs import FieldError, JobRequest, Route
from farm.routing.route import route
from farm.settings import QueueSpec, Settings

PRICES = default_pricebook()
# haiku: $1/M in, $5/M out; opus-5: $5/M in, $25/M out
CHEAP_FIRST = QueueSpec(name="cheap", model="claude-haiku-4-5", complexity="simple",
                        fallback_model="claude-opus-5")
UNPRICED = QueueSpec(name="mystery", model="claude-unpriced-9", complexity="complex")


def _settings(**kw: Any) -> Settings:
    return Settings(queues=(CHEAP_FIRST, UNPRICED), **kw)


def _routed(settings: Settings, **fields: Any) -> tuple[JobRequest, Route]:
    request = JobRequest(**fields)
    return request, route(request, settings.queues)


def test_a_job_over_its_cap_is_refused_with_the_figures() -> None:
    settings = _settings()
    request, chosen = _routed(settings, prompt="abcd" * 10, queue="cheap", max_tokens=10_000,
                              max_cost_usd=Decimal("0.04"))
    with pytest.raises(FieldError) as refused:
        check_cost_cap(request, chosen, settings, PRICES)
    # 10 + 16 input tokens at $1/M + 10,000 output tokens at $5/M = $0.050026
    assert refused.value.field == "max_cost_usd"
    assert refused.value.problem == (
        "worst case $0.05003 (26 input tokens at $1.00/M + 10,000 output tokens at $5.00/M on "
        "claude-haiku-4-5 = $0.05003) exceeds the job's cost cap $0.0400 (max_cost_usd)")
    # at the cap exactly it fits
    request, chosen = _routed(settings, prompt="abcd" * 10, queue="cheap", max_tokens=10_000,
                              max_cost_usd=Decimal("0.050026"))
    check_cost_cap(request, chosen, settings, PRICES)


def test_a_job_allowing_fallback_is_checked_on_the_dearer_model() -> None:
    settings = _settings()
    fields: dict[str, Any] = {"prompt": "hello", "queue": "cheap", "max_tokens": 10_000,
                              "max_cost_usd": Decimal("0.10")}
    # on haiku alone: $0.05 fits $0.10
    request, chosen = _routed(settings, **fields)
    check_cost_cap(request, chosen, settings, PRICES)
    # on its fallback, opus-5, it can cost $0.25
    request, chosen = _routed(settings, **fields, allow_fallback=True)
    worst = dearest_call(request, chosen, settings, PRICES)
    assert worst is not None and worst.model == "claude-opus-5"
    with pytest.raises(FieldError, match=r"on claude-opus-5 = \$0\.2501\) exceeds .* \$0\.100"):
        check_cost_cap(request, chosen, settings, PRICES)


def test_a_model_without_a_price_row_is_not_refused() -> None:
    settings = _settings()
    request, chosen = _routed(settings, prompt="hi", queue="mystery", max_tokens=64_000,
                              max_cost_usd=Decimal("0.000001"))
    assert dearest_call(request, chosen, settings, PRICES) is None
    check_cost_cap(request, chosen, settings, PRICES)  # nothing can be said of its cost
    # an unpriced fallback leaves the priced model's check in place
    queue = QueueSpec(name="q", model="claude-haiku-4-5", complexity="simple",
                      fallback_model="claude-unpriced-9")
    settings = Settings(queues=(queue,))
    request, chosen = _routed(settings, prompt="hi", queue="q", max_tokens=64_000,
                              allow_fallback=True, max_cost_usd=Decimal("0.01"))
    with pytest.raises(FieldError, match="on claude-haiku-4-5"):
        check_cost_cap(request, chosen, settings, PRICES)


@pytest.mark.parametrize(("job", "tenant", "queue", "want"), [
    ("0.50", "0.40", "0.30", "0.50"),  # the job's own cap wins
    (None, "0.40", "0.30", "0.40"),  # else its tenant's
    (None, None, "0.30", "0.30"),  # else its queue's
    (None, None, None, "0.20"),  # else the farm's
])
def test_the_most_specific_cap_decides(job: str | None, tenant: str | None,
                                       queue: str | None, want: str) -> None:
    spec = CHEAP_FIRST.model_copy(update={"max_cost_usd": queue and Decimal(queue)})
    settings = Settings(queues=(spec,), max_cost_usd=Decimal("0.20"),
                        tenant_max_cost_usd={"acme": Decimal(tenant)} if tenant else {})
    # haiku, 60,000 output tokens: $0.30 and a little; fits the caps above that
    request, chosen = _routed(settings, prompt="hi", queue="cheap", tenant="acme",
                              max_tokens=60_000, max_cost_usd=job and Decimal(job))
    assert job_cap(request, chosen.queue, settings) == Decimal(want)
    if Decimal(want) > Decimal("0.30"):
        check_cost_cap(request, chosen, settings, PRICES)
    else:
        with pytest.raises(FieldError, match=rf"exceeds the job's cost cap \${want[:4]}"):
            check_cost_cap(request, chosen, settings, PRICES)
    # another tenant does not get acme's cap
    other, _ = _routed(settings, prompt="hi", queue="cheap", tenant="other",
                       max_tokens=60_000)
    assert job_cap(other, chosen.queue, settings) == (Decimal(queue) if queue else
                                                      Decimal("0.20"))


def test_validate_refuses_an_over_cap_job_naming_the_field() -> None:
    jobs = [{"prompt": "fine"}, {"prompt": "hi", "max_tokens": 64_000, "max_cost_usd": "0.01",
                                     "complexity": "complex"}]
    with pytest.raises(InvalidJobError) as refused:
        validate(jobs, Settings())
    [(index, field, message)] = refused.value.problems
    assert (index, field) == (1, "max_cost_usd")
    assert "64,000 output tokens at $10.00/M on claude-sonnet-5-5" in message
    assert "exceeds the job's cost cap $0.0100" in message
    # the estimates route it without the check, to report it
    assert len(validate(jobs, Settings(), check_caps=False)) == 2


def test_expected_cost_from_history_capped_at_max_tokens() -> None:
    settings = Settings()
    request, chosen = _routed(settings, prompt="abcd" * 100, complexity="simple",
                              max_tokens=500)
    assert chosen.model == "claude-haiku-4-5"
    none = forecast.expected_cost(request, chosen, PRICES, {})
    assert (none.output_tokens, none.basis) == (500, "no history: worst case")
    # 116 input tokens at $1/M + 500 at $5/M
    assert none.usd == Decimal("0.002616")
    seen = forecast.expected_cost(request, chosen, PRICES,
                                  {("haiku-simple", "claude-haiku-4-5"): (199.2, 40)})
    assert seen.output_tokens == 200 and seen.usd == Decimal("0.001116")
    assert seen.basis == ("mean output 199 tokens of the last 40 succeeded jobs of "
                          "haiku-simple on claude-haiku-4-5")
    over = forecast.expected_cost(request, chosen, PRICES,
                                  {("haiku-simple", "claude-haiku-4-5"): (900.0, 3)})
    assert over.output_tokens == 500 and over.basis.endswith("capped at max_tokens 500")
    # another queue's or model's history does not count
    other = forecast.expected_cost(request, chosen, PRICES,
                                   {("haiku-simple", "claude-opus-5"): (10.0, 3)})
    assert other.basis == "no history: worst case"


def test_estimates_add_up_and_report_the_over_cap_job() -> None:
    settings = _settings()
    routed = [_routed(settings, prompt="a", queue="cheap", max_tokens=1000),
              _routed(settings, prompt="b", queue="cheap", max_tokens=64_000,
                      max_cost_usd=Decimal("0.01")),
              _routed(settings, prompt="c", queue="mystery")]
    got = forecast.estimate_jobs(routed, settings, PRICES,
                                 {("cheap", "claude-haiku-4-5"): (100.0, 7)})
    first, over, unknown = got.jobs
    assert first.fits and first.worst_usd == Decimal("0.005017")
    assert first.expected.usd == Decimal("0.000517") and first.cap_usd == Decimal("2.00")
    assert not over.fits and over.worst_usd == Decimal("0.320017")
    assert unknown.fits and unknown.worst_usd is None and unknown.expected.usd is None
    assert "no price row" in unknown.expected.basis
    assert got.totals.jobs == 3 and got.totals.unpriced_jobs == 1
    assert got.totals.worst_usd == first.worst_usd + over.worst_usd
    assert got.totals.expected_usd == Decimal("0.001034")
    [(index, field, message)] = got.problems
    assert (index, field) == (1, "max_cost_usd") and message == over.worst_explain
    table = forecast.render(got, ["line 1", "line 2", "line 4"])
    assert "OVER CAP" in table and "line 4" in table and "$0.3200" in table
    assert table.splitlines()[-1] == "nothing was enqueued (dry run)"
    assert "1 job(s) on a model with no price row" in table
    # JSON keeps the money exact and in fixed point
    dumped = got.model_dump(mode="json")
    assert dumped["totals"]["expected_usd"] == "0.001034"
    assert dumped["jobs"][0]["route"]["queue"] == "cheap"


def test_the_cap_at_submit_counts_the_cache_writes_of_the_queues_ttl() -> None:
    fields = {"prompt": "Summarise.", "system": "s" * 4 * 5000, "queue": "cheap",
              "max_tokens": 10}
    plain, hour = _settings(prompt_cache="off"), Settings(queues=(
        CHEAP_FIRST.model_copy(update={"prompt_cache": "1h"}), UNPRICED), prompt_cache="off")
    off, long = dearest_call(*_routed(plain, **fields), plain, PRICES), \
        dearest_call(*_routed(hour, **fields), hour, PRICES)
    assert off is not None and long is not None
    assert (off.cache_write_tokens, long.cache_write_tokens) == (0, 3 + 5000)
    assert long.cache_write_price == Decimal("2.00")  # haiku-4-5's 1-hour write: 2x $1
    assert long.usd > off.usd


def test_a_batch_job_is_checked_at_the_batch_price() -> None:
    # worst case on haiku: 11 input + 16 framing tokens at $1/M + 10,000 output at $5/M,
    # about $0.05 synchronously, half of it in a Message Batch: a $0.03 cap takes only that
    settings = _settings()
    fields: dict[str, Any] = {"prompt": "abcd" * 10, "queue": "cheap", "max_tokens": 10_000,
                              "max_cost_usd": Decimal("0.03")}
    request, chosen = _routed(settings, **fields, batch=True)
    check_cost_cap(request, chosen, settings, PRICES)
    sync = dearest_call(*_routed(settings, **fields, batch=False), settings, PRICES)
    half = dearest_call(request, chosen, settings, PRICES)
    assert sync is not None and half is not None and half.usd * 2 == sync.usd
    with pytest.raises(FieldError, match="exceeds the job's cost cap"):
        check_cost_cap(*_routed(settings, **fields, batch=False), settings, PRICES)
