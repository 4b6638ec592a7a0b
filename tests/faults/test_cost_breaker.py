"""The cost circuit breaker with real workers against the simulator: a burst of calls pushes
the farm's spend rate over its threshold, the breaker opens (an alert in the log, jobs
deferred with "cost breaker all open", no call goes out), and once the rate has fallen under
half the threshold with nothing spent meanwhile it closes and the deferred jobs run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import redis
from sqlalchemy import text

from farm.client import Farm
from farm.costs.estimate import worst_case
from farm.costs.ledger import Ledger, LedgerConfig
from farm.costs.money import usd
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest, JobStatus
from tests_e2e import deferrals, log_text, running_workers, wait_for_text

THRESHOLD = Decimal("0.30")  # USD a minute: ~10 calls' worth over the window
WINDOW_S = 10.0
CLOSE_SHARE = 0.5
WORKERS, SLOTS = 2, 10
JOBS = 40
REASON = "cost breaker all open"


@dataclass
class Watch:
    """What polling the ledger saw (local clock): per time the breaker was open, when it was
    first seen open, last seen open and first seen closed; its rates."""

    open_spans: list[tuple[float, float, float | None]] = field(default_factory=list)
    peak_rate: Decimal = Decimal(0)
    rates_at_close: list[Decimal] = field(default_factory=list)
    waiting_seen: int = 0  # the most jobs seen waiting with the breaker's reason at once

    def saw(self, before: float, after: float, rate: Decimal, is_open: bool) -> None:
        """A reading made between ``before`` and ``after``."""
        self.peak_rate = max(self.peak_rate, rate)
        spans = self.open_spans
        if is_open:
            if spans and spans[-1][2] is None:
                spans[-1] = (spans[-1][0], before, None)
            else:
                spans.append((after, before, None))
        elif spans and spans[-1][2] is None:
            spans[-1] = (spans[-1][0], spans[-1][1], after)
            self.rates_at_close.append(rate)


def ledger_rate(settles: list[tuple[float, Decimal]], t: float) -> Decimal:
    """The ledger's spend rate (USD a minute) at ``t`` from the calls' settle times and costs
    (farm.costs.spend_rate: the current bucket plus the previous one, weighted)."""
    start = (t // WINDOW_S) * WINDOW_S
    cur = sum((c for u, c in settles if start <= u <= t), Decimal(0))
    prev = sum((c for u, c in settles if start - WINDOW_S <= u < start), Decimal(0))
    covered = Decimal(str(max(0.0, 1 - (t - start) / WINDOW_S)))
    return (prev * covered + cur) * Decimal(60) / Decimal(str(WINDOW_S))


def test_cost_breaker_opens_and_closes(e2e_env: dict[str, str], farm: Farm,
                                       tmp_path: Path) -> None:
    env = {**e2e_env, "FARM_COST_BREAKER_USD_PER_MIN": str(THRESHOLD),
           "FARM_COST_BREAKER_WINDOW_S": str(int(WINDOW_S)),
           "FARM_COST_BREAKER_CLOSE_SHARE": str(CLOSE_SHARE), "FARM_DB_POOL_SIZE": "4"}
    client = redis.Redis.from_url(e2e_env["FARM_BROKER_URL"])
    ledger = Ledger(client, None, LedgerConfig(
        breaker_usd_per_min=THRESHOLD, breaker_window_s=WINDOW_S,
        breaker_close_share=CLOSE_SHARE), lambda: [])
    client.delete(*ledger.breaker_keys("all"))  # no spend window left by an earlier run
    jobs = [{"prompt": f"[[sim:latency=1]] [[sim:tokens=1000]] breaker question #{i}?",
             "complexity": "simple", "tenant": "breaker", "max_tokens": 1024}
            for i in range(JOBS)]
    price = default_pricebook().price("claude-haiku-4-5")
    assert price is not None
    one_call = worst_case(price, JobRequest.model_validate(jobs[0])).usd
    logs = [tmp_path / f"worker-{n}.log" for n in range(WORKERS)]
    watch = Watch()
    try:
        with running_workers(env, [(log, "haiku-simple", SLOTS) for log in logs]):
            ids = farm.submit_many(jobs)
            deadline = time.monotonic() + 80
            last_db = 0.0
            while True:
                before = time.time()
                rate, is_open = ledger.breaker_state("all")
                watch.saw(before, time.time(), rate, is_open)
                if time.monotonic() - last_db > 0.5:
                    last_db = time.monotonic()
                    views = farm.statuses(ids)
                    watch.waiting_seen = max(watch.waiting_seen, sum(
                        v.status is JobStatus.QUEUED and v.wait_reason == REASON
                        for v in views))
                    if all(v.status.terminal for v in views):
                        break
                assert time.monotonic() < deadline, f"not all done; breaker: {watch}"
                time.sleep(0.05)
            wait_for_text(logs, f"ALERT: {REASON}", timeout=5)
            shown = log_text(*logs)
        with farm.engine.connect() as conn:
            spans = conn.execute(text(
                "select started_at, finished_at, cost_usd from attempts "
                "where job_id = any(:ids) order by finished_at"), {"ids": ids}).all()
    finally:
        client.delete(*ledger.breaker_keys("all"))
        client.close()

    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * JOBS
    assert len(spans) == JOBS  # one call each
    # it opened: the alert, the jobs' wait_reason, the ledger; and it closed again (the jobs
    # it held ran), at a rate under half the threshold
    deferred = deferrals(shown, REASON)
    assert deferred and watch.waiting_seen > 0, (deferred, watch)
    assert watch.open_spans and watch.open_spans[0][2] is not None, watch
    assert all(r < THRESHOLD * Decimal(str(CLOSE_SHARE)) for r in watch.rates_at_close), watch
    # no call went out while it was open (a call admitted just before it opened may record
    # its start a moment later)
    starts = [s.timestamp() for s, _, _ in spans]
    for seen_open, last_open, _ in watch.open_spans:
        during = [t for t in starts if seen_open + 0.5 < t < last_open]
        assert not during, f"{len(during)} call(s) started while the breaker was open"
    # the spend rate stayed bounded. The ledger's rate (two buckets of WINDOW_S, aligned to
    # multiples of it, the previous one weighted by what the window still covers) was under
    # the threshold when the last call was let in; it then grows only by the calls in flight
    # (the slots): it never passes threshold + slots x worst case. Over any window of the
    # clock, the spend is at most that in each of the two buckets.
    settles = [(f.timestamp(), c) for _, f, c in spans]
    in_flight = WORKERS * SLOTS * one_call * Decimal(60) / Decimal(str(WINDOW_S))
    ledger_peak = max(ledger_rate(settles, t) for t, _ in settles)
    assert ledger_peak <= THRESHOLD + in_flight, (ledger_peak, THRESHOLD + in_flight)
    peak, peak_at = max((sum((c for u, c in settles if t - WINDOW_S < u <= t), Decimal(0))
                         * Decimal(60) / Decimal(str(WINDOW_S)), t) for t, _ in settles)
    bound = 2 * (THRESHOLD + in_flight)
    assert peak <= bound, (peak, bound)

    def at(t: float | None) -> str:
        return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3]
    first_start = min(starts)
    cycles = ", ".join(f"opened at +{o - first_start:.1f}s, closed at "
                       f"{'-' if c is None else f'+{c - first_start:.1f}s'}"
                       for o, _, c in watch.open_spans)
    ended = max(f for _, f, _ in spans).timestamp() - first_start
    print(f"\nMEASURED cost breaker: opened at {at(watch.open_spans[0][0])}, closed at "
          f"{at(watch.open_spans[0][2])} UTC ({cycles}); peak rate "
          f"{usd(peak, significant=3)}/min over any {WINDOW_S:.0f}s of the attempt rows "
          f"(at {at(peak_at)}; bound {usd(bound, significant=3)}/min); the ledger's rate at "
          f"most {usd(ledger_peak, significant=3)}/min (bound "
          f"{usd(THRESHOLD + in_flight, significant=3)}/min; highest read while polling "
          f"{usd(watch.peak_rate, significant=3)}/min); threshold {usd(THRESHOLD)}/min; "
          f"{sum(deferred.values())} deferrals of {len(deferred)} jobs; all {JOBS} "
          f"succeeded in {ended:.1f}s")
