"""Why a queued job waits is recorded with its countdown, cleared when it starts, and a
wake-up for one reason leaves jobs waiting for others (a retry's backoff) alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.client import Farm
from farm.settings import Settings
from farm.store import jobs as store


@pytest.fixture
def farm(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[Farm]:
    with Farm(Settings(broker_url=broker_url, database_url=database_url,
                       data_dir=tmp_path)) as f:
        yield f


def test_reasons_are_kept_and_only_the_named_ones_woken(farm: Farm) -> None:
    paused, held, backoff, other_queue = (farm.submit(prompt=f"job {i}?",
                                                      complexity="simple") for i in range(4))
    started = store.start_job(farm.db, paused, lease_s=60)
    assert started is not None
    store.unstart(farm.db, started, 600, store.paused("haiku-simple"))
    store.defer(farm.db, held, 600, f"{store.HELD}spend limit")
    store.defer(farm.db, backoff, 600, "retry after overloaded (backoff)")
    store.defer(farm.db, other_queue, 600, store.paused("sonnet-complex"))
    assert farm.status(paused).wait_reason == "queue haiku-simple is paused"
    assert farm.status(paused).next_run_at is not None and farm.status(paused).attempts == 0
    woken = store.wake(farm.db, store.paused("haiku-simple"), "haiku-simple")
    assert [w[0] for w in woken] == [paused]
    assert farm.status(paused).wait_reason is None
    assert [w[0] for w in store.wake(farm.db, store.HELD)] == [held]
    assert farm.status(backoff).wait_reason == "retry after overloaded (backoff)"
    assert farm.status(other_queue).wait_reason == "queue sonnet-complex is paused"
    again = store.start_job(farm.db, backoff, lease_s=60)
    assert again is not None and farm.status(backoff).wait_reason is None  # cleared on start
