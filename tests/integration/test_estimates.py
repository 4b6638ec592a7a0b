"""Farm.estimate on a real Postgres and Redis: the expected output comes from the most
recent succeeded jobs of the same queue and served model, and an estimate writes nothing
(no row, no message). The jobs here live in a database of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from farm.client import Farm, InvalidJobError
from farm.costs.forecast import output_history
from farm.settings import Settings
from farm.store import jobs as store
from tests_support import fresh_database

HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-5-5"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _job(queue: str, model: str, status: str, output_tokens: int, minute: int,
         served: str | None = None) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "status": status, "complexity": "simple", "queue": queue,
            "model": model, "priority": "normal", "tenant": "t", "request": {"prompt": "x"},
            "served_model": served if served is not None else model,
            "output_tokens": output_tokens, "finished_at": T0 + timedelta(minutes=minute)}


# haiku-simple on haiku: 200 recent jobs of 100 output tokens, 10 older ones of 10,000 (too
# old to count); sonnet-complex on sonnet: 300/400/500 tokens, and jobs that must not count:
# a failed one, one served by the fallback (haiku), one still running
HISTORY = (
    [_job("haiku-simple", HAIKU, "succeeded", 10_000, m) for m in range(10)]
    + [_job("haiku-simple", HAIKU, "succeeded", 100, 100 + m) for m in range(200)]
    + [_job("sonnet-complex", SONNET, "succeeded", n, 500) for n in (300, 400, 500)]
    + [_job("sonnet-complex", SONNET, "failed", 9_999, 600),
       _job("sonnet-complex", SONNET, "succeeded", 8_000, 601, served=HAIKU),
       _job("sonnet-complex", SONNET, "running", 7_000, 602)]
)


@pytest.fixture(scope="module")
def farm(service_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory,
         ) -> Iterator[Farm]:
    with fresh_database(service_urls[1], "farm_estimates", "head") as url:
        settings = Settings(broker_url=service_urls[0], database_url=url,
                            data_dir=tmp_path_factory.mktemp("estimates"))
        with Farm(settings) as handle:
            with handle.db.begin() as conn:
                store.insert_jobs(conn, HISTORY)
            yield handle


def _counts(engine: Engine, broker: redis.Redis, queues: tuple[str, ...]) -> dict[str, int]:
    with engine.connect() as conn:
        rows = {t: int(conn.execute(text(f"select count(*) from {t}")).scalar_one())
                for t in ("jobs", "attempts", "dead_letters")}
    return {**rows, **{q: int(broker.llen(q)) for q in queues}, "keys": int(broker.dbsize())}


def test_history_is_the_mean_of_the_last_200_succeeded_jobs_of_the_queue_and_model(
    farm: Farm,
) -> None:
    got = output_history(farm.engine, [("haiku-simple", HAIKU), ("sonnet-complex", SONNET),
                                       ("sonnet-complex", HAIKU), ("nowhere", HAIKU)])
    assert got == {("haiku-simple", HAIKU): (100.0, 200),
                   ("sonnet-complex", SONNET): (400.0, 3),
                   ("sonnet-complex", HAIKU): (8_000.0, 1)}
    assert output_history(farm.engine, []) == {}


def test_an_estimate_uses_the_history_and_writes_nothing(farm: Farm) -> None:
    broker = redis.Redis.from_url(farm.broker_url)
    queues = farm.settings.servable_queues
    try:
        before = _counts(farm.engine, broker, queues)
        got = farm.estimate([
            {"prompt": "abcd" * 100, "complexity": "simple", "max_tokens": 500},
            {"prompt": "abcd" * 100, "complexity": "complex", "max_tokens": 350},
            {"prompt": "abcd" * 100, "queue": "haiku-simple", "tenant": "t2", "max_tokens": 50},
            {"prompt": "hi", "complexity": "simple", "max_tokens": 64_000,
             "max_cost_usd": "0.05"},
        ])
        after = _counts(farm.engine, broker, queues)
    finally:
        broker.close()
    assert after == before
    simple, complex_, short, over = got.jobs
    # 116 input tokens at $1/M + the mean 100 output tokens at $5/M
    assert (simple.route.queue, simple.route.model) == ("haiku-simple", HAIKU)
    assert simple.expected.output_tokens == 100 and simple.expected.usd == Decimal("0.000616")
    assert simple.expected.basis == ("mean output 100 tokens of the last 200 succeeded jobs "
                                     "of haiku-simple on claude-haiku-4-5")
    assert simple.worst_usd == Decimal("0.002616") and simple.fits
    # sonnet: the mean 400 is over max_tokens 350
    assert (complex_.route.queue, complex_.route.model) == ("sonnet-complex", SONNET)
    assert complex_.expected.output_tokens == 350
    assert complex_.expected.basis.endswith("capped at max_tokens 350")
    assert short.expected.output_tokens == 50
    # over its cap: reported, not raised; what a submit would refuse
    assert not over.fits and over.cap_usd == Decimal("0.05")
    assert [(i, f) for i, f, _ in got.problems] == [(3, "max_cost_usd")]
    assert got.totals.jobs == 4
    assert got.totals.expected_usd == sum((j.expected.usd or Decimal(0) for j in got.jobs),
                                          Decimal(0))
    # and a submit of the same job is refused, nothing enqueued
    with pytest.raises(InvalidJobError, match="max_cost_usd: worst case"):
        farm.submit_many([{"prompt": "hi", "complexity": "simple", "max_tokens": 64_000,
                           "max_cost_usd": "0.05"}])


def test_an_estimate_with_no_history_is_the_worst_case(
    farm: Farm, service_urls: tuple[str, str], tmp_path: Path,
) -> None:
    got = farm.estimate([{"prompt": "hello", "queue": "sonnet-complex", "tenant": "x",
                          "max_tokens": 123, "model": HAIKU}])
    [job] = got.jobs
    # haiku served sonnet-complex once (as its fallback): that is its history there
    assert job.expected.output_tokens == 123 and "capped at max_tokens" in job.expected.basis
    got = farm.estimate([{"prompt": "hello", "max_tokens": 123, "complexity": "simple",
                          "metadata": {"k": "v"}, "priority": "low"}])
    assert got.jobs[0].expected.basis.startswith("mean output 100")
    with fresh_database(service_urls[1], "farm_estimates_empty", "head") as url:
        settings = Settings(broker_url=service_urls[0], database_url=url, data_dir=tmp_path)
        with Farm(settings) as empty:
            [job] = empty.estimate([{"prompt": "hello", "max_tokens": 123}]).jobs
    assert job.expected.output_tokens == 123
    assert job.expected.basis == "no history: worst case"
    assert job.expected.usd == job.worst_usd


def test_an_invalid_job_raises_as_submit_does(farm: Farm) -> None:
    with pytest.raises(InvalidJobError) as refused:
        farm.estimate([{"prompt": "ok"}, {"prompt": "x", "priority": "urgent"}])
    assert [(i, f) for i, f, _ in refused.value.problems] == [(1, "priority")]
