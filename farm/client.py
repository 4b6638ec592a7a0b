"""The Python API for services: submit, status, wait, cancel, list jobs, report.

    from farm.client import Farm
    with Farm() as farm:
        job_id = farm.submit(prompt="Summarise this …", tenant="search")
        view = farm.wait([job_id], timeout=60)[0]
        print(view.status, view.response_text, view.cost_usd)

Every job is validated (pydantic) and routed before anything is written; a batch with one
bad job raises InvalidJobError naming each bad field and enqueues nothing. Job rows are
committed before their messages are published.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import redis
from kombu.exceptions import BatchPublishError

from farm.app import create_app, send_job
from farm.batches import submit as batch_submit
from farm.broker import layout
from farm.broker.layout import DEAD_LETTER_QUEUE
from farm.costs import forecast, html, reports, savings
from farm.costs.admit import check_cost_cap
from farm.costs.controls import Budgets
from farm.costs.forecast import Estimates
from farm.costs.pricing import PriceBook, default_pricebook
from farm.jobs import JobRequest, JobStatus, Priority, Route, new_job_id
from farm.jobs import problems as job_problems
from farm.reliability import dlq, idempotency
from farm.routing.route import parse_and_route
from farm.services import resolve_urls
from farm.settings import Settings
from farm.store import jobs as store
from farm.store import keyed
from farm.store.db import Database
from farm.views import (
    InvalidJobError,
    JobFinishedError,
    JobView,
    SubmitError,
    WaitTimeoutError,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["Farm", "InvalidJobError", "JobFinishedError", "JobView", "SubmitError",
           "WaitTimeoutError", "validate"]

JobLike = JobRequest | Mapping[str, Any]
SUBMIT_CHUNK = 100


def validate(jobs: Sequence[JobLike], settings: Settings, prices: PriceBook | None = None,
             *, check_caps: bool = True) -> list[tuple[JobRequest, Route]]:
    """Validate and route every job and (unless ``check_caps`` is False) check its worst
    case against its cost cap (pure; ``prices``: the packaged price book unless given);
    raise InvalidJobError listing all problems."""
    book = default_pricebook() if prices is None else prices
    problems: list[tuple[int, str, str]] = []
    out: list[tuple[JobRequest, Route]] = []
    for index, job in enumerate(jobs):
        try:
            request, chosen = parse_and_route(job, settings.queues,
                                              band=settings.router_second_opinion)
            if check_caps:
                check_cost_cap(request, chosen, settings, book)
            out.append((request, chosen))
        except ValueError as exc:  # pydantic's ValidationError too
            problems.extend((index, field, message) for field, message in job_problems(exc))
    if problems := problems or idempotency.batch_conflicts([r for r, _ in out]):
        raise InvalidJobError(problems)
    return out


class Farm:
    """A handle on the farm for one service process. Thread-safe; close() when done."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        urls = resolve_urls(self.settings)
        self.broker_url = urls.broker_url
        self.app = create_app(self.settings, broker_url=urls.broker_url)
        self._database_url = urls.database_url
        # jobs, keys, dead letters, budgets: the farm's own connections (farm.store.db)
        self.db = Database(urls.database_url, size=8)
        self._engine: Engine | None = None  # the reports' SQLAlchemy engine, made when asked
        self._redis: redis.Redis | None = None
        self._budgets: Budgets | None = None

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        """A SQLAlchemy engine on the farm's database, for the SQL reports and estimates
        (made on first use: a service that only submits and reads jobs opens no connection
        for it)."""
        if self._engine is None:
            from farm.store.schema import make_engine

            self._engine = make_engine(self._database_url, pool_size=2, max_overflow=2)
        return self._engine

    @property
    def budgets(self) -> Budgets:
        """Budgets: set, list, remove (farm.costs.controls)."""
        if self._budgets is None:
            self._redis = redis.Redis.from_url(self.broker_url)
            self._budgets = Budgets(self._redis, self.db, self.wake)
        return self._budgets

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        self.db.close()
        if self._engine is not None:
            self._engine.dispose()
        self.app.close()

    # --- submitting -------------------------------------------------------------------

    def submit(self, job: JobLike | None = None, /, **fields: Any) -> uuid.UUID:
        """Submit one job, given as a JobRequest, a mapping, or keyword fields."""
        return self.submit_many([job if job is not None else fields])[0]

    def submit_many(self, jobs: Iterable[JobLike]) -> list[uuid.UUID]:
        """Validate and route all (nothing is written if any is invalid or has an idempotency
        key held with another request: IdempotencyConflictError), then record and publish
        chunk by chunk. A key held already gives its job's id, never published twice."""
        routed = validate(list(jobs), self.settings)
        keyed.check_held(self.db, [request for request, _ in routed])
        ids = [new_job_id() for _ in routed]
        with self.app.producer_or_acquire() as producer:
            for first in range(0, len(ids), SUBMIT_CHUNK):
                chunk = list(zip(ids[first:first + SUBMIT_CHUNK],
                                 routed[first:first + SUBMIT_CHUNK], strict=True))
                batched = [batch_submit.row_fields(request, chosen, self.settings)
                           for _, (request, chosen) in chunk]
                with self.db.begin() as conn:  # each job's id, or its key's holder's
                    ids[first:first + SUBMIT_CHUNK] = taken = keyed.record(conn, chunk, batched)
                waiting = {job_id for (job_id, _), row in zip(chunk, batched, strict=True)
                           if row["batched"]}
                new = [job for job in keyed.inserted(chunk, taken) if job[0] not in waiting]
                self._publish(new, producer, submitted=first)  # batch jobs are not
        return ids

    def estimate(self, jobs: Iterable[JobLike]) -> Estimates:
        """What the jobs would cost, per job and in total: route, worst case, expected cost
        (from the output length of recent succeeded jobs of the same queue and model: one
        read-only query) and cap. Nothing is enqueued or written. InvalidJobError as
        submit_many raises it, but for a job over its cost cap: that one is returned with
        ``fits`` False (``Estimates.problems`` lists it as submit would refuse it)."""
        routed = validate(list(jobs), self.settings, check_caps=False)
        history = forecast.output_history(self.engine, [(chosen.queue, chosen.model)
                                                        for _, chosen in routed])
        return forecast.estimate_jobs(routed, self.settings, default_pricebook(), history)

    def _publish(self, chunk: list[tuple[uuid.UUID, tuple[JobRequest, Route]]], producer: Any,
                 *, submitted: int) -> None:
        """Publish a chunk's messages in one round trip (kombu's publish batch: one pipeline
        of LPUSHes). When it fails, which of them reached the broker is unknown: every job
        of the chunk not yet taken by a worker is recorded as failed, so a message that did
        arrive finds its job finished and is acknowledged unrun; one a worker already took
        counts as published."""
        if not chunk:
            return
        try:
            with producer.batch(max_size=len(chunk)):
                for job_id, (request, chosen) in chunk:
                    send_job(self.app, job_id, chosen.queue, request.priority, producer)
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, BatchPublishError) and exc.__cause__ else exc
            reason = f"publish failed: {type(cause).__name__}: {cause}"[:500]
            with self.db.begin() as conn:
                failed = store.fail_unpublished(conn, [i for i, _ in chunk], reason)
            raise SubmitError(submitted + len(chunk) - len(failed), reason, failed) from exc

    # --- reading ----------------------------------------------------------------------

    def status(self, job_id: uuid.UUID | str) -> JobView:
        views = self.statuses([job_id])
        if not views:
            raise KeyError(f"no job {job_id}")
        return views[0]

    def statuses(self, job_ids: Iterable[uuid.UUID | str]) -> list[JobView]:
        ids = [uuid.UUID(str(i)) for i in job_ids]
        rows = store.get_jobs(self.db, ids, columns=list(JobView.model_fields))
        return [JobView.model_validate(rows[i]) for i in ids if i in rows]

    def jobs(self, *, tenant: str | None = None, status: Iterable[JobStatus | str] = (),
             queue: str | None = None, since: datetime | None = None,
             limit: int = 50) -> list[JobView]:
        """Jobs newest first: of a tenant, in any of these statuses, on a queue, created at or
        after `since` (each filter when given); at most `limit`."""
        rows = store.list_jobs(self.db, list(JobView.model_fields), tenant=tenant,
                               statuses=[JobStatus(s).value for s in status], queue=queue,
                               since=since, limit=limit)
        return [JobView.model_validate(row) for row in rows]

    def wait(
        self,
        job_ids: Sequence[uuid.UUID | str],
        *,
        timeout: float | None = None,
        poll_s: float = 0.25,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[JobView]:
        """Block until every job is terminal, calling on_progress(finished, total) after each
        look. A job with no row counts as not finished (a job sent inline with send_task gets
        its row when a worker takes it; `unknown` tells such ids from ones that name no job).
        WaitTimeoutError (a TimeoutError) lists the jobs not finished in time."""
        ids = [uuid.UUID(str(i)) for i in job_ids]
        pending = set(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pending = store.unfinished(self.db, list(pending)) if pending else set()
            if on_progress is not None:
                on_progress(len(ids) - len(pending), len(ids))
            if not pending:
                return self.statuses(ids)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError([i for i in ids if i in pending], len(ids),
                                       timeout or 0.0)
            time.sleep(poll_s)

    def unknown(self, job_ids: Iterable[uuid.UUID | str], *, recheck_s: float = 0.5,
                scan_max: int = 50_000) -> list[uuid.UUID] | None:
        """The ids that name no job: no row in Postgres and no message in Redis. A job sent
        inline with send_task has no row until a worker takes it, but until then its message
        is in a queue's list or held by a worker (kombu's unacknowledged hash). Rows are read
        again after Redis, so a job recorded meanwhile counts; an id found nowhere is looked
        for once more after recheck_s (kombu moves a message from its list to the hash in
        two steps). None when the queues hold more than scan_max messages: too many to look
        through, so ids without a row cannot be told from jobs not recorded yet."""
        ids = list(dict.fromkeys(uuid.UUID(str(i)) for i in job_ids))
        missing = self._without_row(ids)
        for look in range(2):
            if not missing:
                break
            if look:
                time.sleep(recheck_s)
            client = redis.Redis.from_url(self.broker_url)
            try:
                present = layout.ids_in_redis(client, set(self.settings.servable_queues),
                                              scan_max=scan_max)
            finally:
                client.close()
            if present is None:
                return None
            missing = self._without_row([i for i in missing if i not in present])
        return missing

    def _without_row(self, ids: list[uuid.UUID]) -> list[uuid.UUID]:
        found = store.get_jobs(self.db, ids, columns=["id"]) if ids else {}
        return [i for i in ids if i not in found]

    def cancel(self, job_id: uuid.UUID | str, *, strict: bool = False) -> JobStatus:
        """Cancel a queued or running job (a running one's late result is kept, not returned
        as success). Returns the job's status after the call; cancelling a finished job
        changes nothing, and with strict=True raises JobFinishedError. KeyError: no job."""
        found = store.cancel_job(self.db, uuid.UUID(str(job_id)))
        if found is None:
            raise KeyError(f"no job {job_id}")
        status, cancelled = JobStatus(found[0]), found[1]
        if strict and not cancelled:
            raise JobFinishedError(job_id, status)
        return status

    def wake(self, reason: str, queue: str | None = None) -> int:
        """Jobs waiting on a countdown for ``reason`` (store.HELD, store.paused(queue)), of
        one queue or all, run now: their messages are published again. Returns how many."""
        woken = store.wake(self.db, reason, queue)
        with self.app.producer_or_acquire() as producer:
            for job_id, job_queue, priority in woken:
                send_job(self.app, job_id, job_queue, Priority(priority), producer)
        return len(woken)

    @overload
    def report(self, *, since: datetime | None = None, until: datetime | None = None,
               by: None = None) -> list[reports.ReportRow]: ...

    @overload
    def report(self, *, since: datetime | None = None, until: datetime | None = None,
               by: str | Sequence[str]) -> list[reports.GroupedRow]: ...

    def report(self, *, since: datetime | None = None, until: datetime | None = None,
               by: str | Sequence[str] | None = None,
               ) -> list[reports.ReportRow] | list[reports.GroupedRow]:
        """Cost report over jobs created in [since, until) (default: all). Without ``by``:
        per queue and model (ReportRow). With ``by`` (``"day,model"``, ``["tenant"]``; keys
        of reports.KEYS; ``()``: one row of totals): GroupedRow with P50/P95/P99 and the
        savings of routing against the complex queue's model (farm.costs.savings)."""
        if by is None:
            if until is not None:
                raise ValueError("until needs by= (the queue and model summary has no end)")
            return reports.summary(self.engine, since=since)
        return reports.grouped(self.engine, by, since=since, until=until,
                               complex_price=savings.complex_price(self.settings.queues,
                                                                   default_pricebook()))

    def report_html(self, path: str | Path, *, since: datetime | None = None,
                    until: datetime | None = None) -> Path:
        """Write the cost report as one self-contained HTML page (farm.costs.html)."""
        data = html.load(self.engine, since=since, until=until, now=datetime.now(UTC),
                         complex_model=savings.complex_model(self.settings.queues),
                         complex_price=savings.complex_price(self.settings.queues,
                                                             default_pricebook()))
        return html.write(Path(path), data)

    # --- dead letters -----------------------------------------------------------------

    def dead_letters(self, *, limit: int = 100, include_replayed: bool = False,
                     ) -> list[dict[str, Any]]:
        return dlq.entries(self.db, limit=limit, include_replayed=include_replayed)

    def dead_letter(self, job_id: uuid.UUID | str) -> dict[str, Any]:
        found = dlq.entry(self.db, uuid.UUID(str(job_id)))
        if found is None:
            raise KeyError(f"job {job_id} is not in the dead-letter queue")
        return found

    def replay(self, job_ids: Sequence[uuid.UUID | str] | None = None,
               ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Send dead jobs (all not yet replayed when job_ids is None) through the router
        again as new jobs with a fresh attempt budget; returns (old id, new id) pairs."""
        wanted = None if job_ids is None else [uuid.UUID(str(i)) for i in job_ids]
        found = dlq.replayable(self.db, wanted)
        if wanted is not None:
            missing = set(wanted) - {row["job_id"] for row in found}
            if missing:
                raise KeyError("not in the dead-letter queue or already replayed: "
                               + ", ".join(sorted(str(m) for m in missing)))
        if not found:
            return []
        new_ids = self.submit_many([row["request"] for row in found])
        pairs = [(row["job_id"], new) for row, new in zip(found, new_ids, strict=True)]
        dlq.mark_replayed(self.db, pairs)
        return pairs

    def purge_dead_letters(self) -> tuple[int, int]:
        """Delete the DLQ rows and the dead-letter queue's messages; returns both counts."""
        with self.app.connection_for_write() as conn:
            messages = int(conn.default_channel.queue_purge(DEAD_LETTER_QUEUE) or 0)
        return dlq.purge(self.db), messages
