"""The farm spread over network namespaces as separate hosts, and one of them cut off.

A ``server`` host runs Valkey and PostgreSQL (migrated), an ``api`` host the simulated
Messages API; hosts ``w1`` … ``wN`` run one real ``celery worker`` each (``slots`` threads,
FARM_SLOTS ``farm_slots``) on ``haiku-simple``, configured with the server's addresses, as a
deployment would be. The process that calls ``run`` submits the jobs (at once, or at a
steady rate from a thread, as a service would) and reads the results over the bridge
(tests_netns). ``cut_at_s`` into the run it cuts (``fault``) w1's link, or w1's path to the
server host only, or the server host's link; it heals the cut after ``cut_s`` seconds and,
for a worker host, not before every call under way on it at the cut was started again
elsewhere (its lease ran out: the takeover); it waits until every job has ended, noting when
each worker host takes its first job after the heal, and until the calls held by the cut
have ended too; it returns the Figures. Issue 17's measurement is ``Scenario(jobs=2000,
hosts=2, slots=100, submit_per_s=None, cut_at_s=8, cut_s=75, lease_s=None)``.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy import text

from farm.client import Farm
from tests_e2e import TASK_LINE, calls_under_way, ended, in_flight, log_text
from tests_hosts import SIM_PORT, farm_hosts
from tests_netns import Network

# deliveries that ended "succeeded" without being the job's result on that host
NOT_OWN = re.compile(r"job ([0-9a-f-]{36})(?:: late result of attempt \d+ superseded| is not "
                     r"runnable)")


class Fault(StrEnum):
    HOST = "host"  # w1's link goes down: it is cut off from everything, its calls stall
    SERVICES = "services"  # w1 cut off from the server host only: its calls finish, late
    SERVER = "server"  # the server host's link: every host loses Valkey and PostgreSQL


@dataclass(frozen=True)
class Scenario:
    jobs: int = 1000
    latency_s: float = 2.0  # each call's simulated latency
    hosts: int = 3  # worker hosts, w1 … wN
    slots: int = 50  # per worker host (its -c)
    farm_slots: str | None = "fixed"  # the workers' FARM_SLOTS; None: the farm's default
    fault: Fault = Fault.HOST
    # jobs submitted a second, as a service would (None: all at once); steady, so that a job
    # a reaper re-queues does not wait behind a backlog, and the healed host finds work
    submit_per_s: float | None = 25.0
    cut_at_s: float = 4.0  # after the submit began
    # how long the cut lasts at least; a worker host's also lasts until its calls under way
    # at the cut were started again elsewhere (or ``timeout_s`` passed)
    cut_s: float = 0.0
    lease_s: float | None = 10.0  # FARM_LEASE_S; None: the farm's default
    reaper_interval_s: float | None = 2.0  # FARM_REAPER_INTERVAL_S; None: the default
    # FARM_ORPHAN_SWEEP_S / FARM_ORPHAN_AGE_S (None: the defaults): a message w1 had popped
    # from its queue when the cut came (BRPOP's reply stalled) is nowhere in Redis; the
    # orphan sweep publishes its job again
    orphan_sweep_s: float | None = 5.0
    orphan_age_s: float | None = 15.0
    timeout_s: float = 600.0  # for every job to end, after the heal
    settle_s: float = 180.0  # for the stalled calls to end, after that

    @property
    def workers(self) -> list[str]:
        return [f"w{n}" for n in range(1, self.hosts + 1)]

    def settings(self) -> dict[str, object | None]:
        """The workers' FARM_… settings (None: the farm's default)."""
        return {"FARM_LEASE_S": self.lease_s, "FARM_REAPER_INTERVAL_S": self.reaper_interval_s,
                "FARM_ORPHAN_SWEEP_S": self.orphan_sweep_s,
                "FARM_ORPHAN_AGE_S": self.orphan_age_s, "FARM_SLOTS": self.farm_slots}

    @property
    def cut_hosts(self) -> list[str]:
        """The worker hosts whose calls the cut holds."""
        return self.workers if self.fault is Fault.SERVER else ["w1"]


@dataclass(frozen=True)
class Figures:
    scenario: Scenario
    submitted: int
    by_status: dict[str, int]
    held_at_cut: int  # calls under way on the cut host(s) when the cut came
    rerun: int  # of those jobs, the ones started again
    cut_for_s: float  # how long the cut lasted
    taken_over_s: float  # from the cut until each of those was started again (nan: not all)
    held_done_s: float  # from the cut until the last of those jobs ended
    resumed_s: dict[str, float]  # per worker host: from the heal to the first job it took
    ran: dict[str, int]  # per worker host: the jobs whose result it recorded
    ran_after_heal: dict[str, int]  # of those, the ones it took after the heal
    finished_after_heal: int  # jobs whose finished_at is after the heal
    first_job_after_heal_s: float  # the first of them, after the heal
    last_job_after_heal_s: float  # the last job's finished_at, after the heal
    last_attempt_after_heal_s: float  # the last attempt's finished_at, after the heal
    doubled: int  # jobs with two or more `ok` attempt rows
    # succeeded jobs whose row a late failed attempt marked (error, wait reason or next run
    # set: a stalled call that timed out after the job had succeeded elsewhere)
    marked: int
    provider_calls: int  # POST /v1/messages the simulator saw
    attempts_by_outcome: dict[str, int]
    unsettled: int  # calls held by the cut that had not ended when the figures were taken
    # superseded attempts by what they were (ok, abandoned, timeout…) and whether their cost
    # is known ("late ok, cost known": 3)
    superseded: dict[str, int] = field(default_factory=dict)
    cost_unknown: int = 0  # jobs whose cost is unknown (an abandoned call's may be billed)
    elapsed_s: float = field(default=0.0)

    @property
    def extra_calls(self) -> int:
        return self.provider_calls - self.submitted

    def lines(self) -> list[str]:
        s = self.scenario
        where = {Fault.HOST: "w1's link", Fault.SERVICES: "w1's path to the server host (not "
                 "to the API)", Fault.SERVER: "the server host's link (Valkey, PostgreSQL)"}
        held_on = "w1" if s.fault is not Fault.SERVER else "the worker hosts"
        took = ", ".join(f"{h} {self.ran.get(h, 0)} ({self.ran_after_heal.get(h, 0)} after "
                         "the heal)" for h in s.workers)
        resumed = ", ".join(f"{h} {self.resumed_s[h]:.1f} s" if h in self.resumed_s
                            else f"{h} never" for h in s.workers)
        return [
            f"scenario: {s.jobs} jobs at {s.latency_s:g} s, {s.hosts} worker hosts x {s.slots} "
            f"slots (FARM_SLOTS {s.farm_slots or 'default'}), lease "
            f"{_or_default(s.lease_s)}; {where[s.fault]} cut {s.cut_at_s:g} s into the run "
            f"(reaper {_or_default(s.reaper_interval_s)}, orphan sweep "
            f"{_or_default(s.orphan_sweep_s)}, orphan age {_or_default(s.orphan_age_s)})",
            f"jobs submitted: {self.submitted}; ended by status: {self.by_status}",
            f"calls under way on {held_on} at the cut: {self.held_at_cut}, of which started "
            f"again: {self.rerun}"
            + (f" (all {self.taken_over_s:.1f} s after the cut)"
               if self.rerun and not math.isnan(self.taken_over_s) else "")
            + f"; their jobs' last result {self.held_done_s:.1f} s after the cut; the cut "
            f"lasted {self.cut_for_s:.1f} s",
            f"after the heal: first job taken by {resumed}; "
            + (f"{self.finished_after_heal} jobs finished, the first "
               f"{self.first_job_after_heal_s:.1f} s after it, the last "
               f"{self.last_job_after_heal_s:.1f} s" if self.finished_after_heal
               else "no job was left")
            + f" (last attempt {self.last_attempt_after_heal_s:+.1f} s)",
            f"jobs run per host: {took}",
            f"jobs with two or more ok attempts: {self.doubled}; succeeded jobs marked by a "
            f"late failed attempt: {self.marked}",
            f"provider calls: {self.provider_calls} for {self.submitted} jobs "
            f"({self.extra_calls} extra)",
            f"attempts by outcome: {self.attempts_by_outcome}",
            f"superseded attempts: {self.superseded or 'none'}; jobs of unknown cost: "
            f"{self.cost_unknown}",
            f"stalled calls not yet ended: {self.unsettled}; run took {self.elapsed_s:.0f} s",
        ]


def _or_default(value: float | None) -> str:
    return "default" if value is None else f"{value:g} s"


def run(scenario: Scenario, work: Path) -> Figures:
    """The scenario on hosts of its own under ``work`` (a new, empty folder); torn down
    afterwards whatever happens."""
    started = time.monotonic()
    with farm_hosts(work, scenario.workers, scenario.slots,
                    scenario.settings()) as (net, farm, logs):
        sim = f"http://{net.host('api').address}:{SIM_PORT}"
        httpx2.post(f"{sim}/_sim/reset")
        producer = Producer(farm, scenario)
        producer.start()
        try:
            cut = _cut_and_heal(net, farm, scenario, logs, producer)
            while producer.is_alive():  # w1 rejoins (or not) while jobs still come in
                cut.note_resumed()
                producer.join(0.2)
        except BaseException:
            producer.halt.set()
            raise
        finally:
            producer.join()
        if producer.error is not None:
            raise producer.error
        ids = producer.ids
        farm.wait(ids, timeout=scenario.timeout_s, poll_s=0.2,
                  on_progress=lambda done, total: cut.note_resumed())
        held_logs = [logs[host] for host in scenario.cut_hosts]
        deadline = time.monotonic() + scenario.settle_s
        while (open_calls := in_flight(log_text(*held_logs)) & cut.held) and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        figures = measure(scenario, farm, ids, cut, len(open_calls), sim)
        ran = {host: len(_ran(log_text(log))) for host, log in logs.items()}
        after = {host: len(_took(_since(log, cut.offsets[host])) - cut.held)
                 for host, log in logs.items()}
    return replace(figures, ran=ran, ran_after_heal=after, elapsed_s=time.monotonic() - started)


class Producer(threading.Thread):
    """Submits the scenario's jobs, all at once or ``submit_per_s`` a second (in batches of
    a quarter of a second), as a service would; ``ids`` grows as it goes."""

    def __init__(self, farm: Farm, scenario: Scenario) -> None:
        super().__init__(name="partition-producer", daemon=True)
        self.farm, self.scenario = farm, scenario
        self.ids: list[uuid.UUID] = []
        self.error: BaseException | None = None
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        s = self.scenario
        batch = max(1, round(s.submit_per_s / 4)) if s.submit_per_s else s.jobs
        try:
            for first in range(0, s.jobs, batch):
                if s.submit_per_s and self.halt.wait(
                        max(0.0, self.t0 + first / s.submit_per_s - time.monotonic())):
                    return
                self.ids.extend(self.farm.submit_many([
                    {"prompt": f"[[sim:latency={s.latency_s:g}]] partition job #{i}",
                     "complexity": "simple", "max_tokens": 64}
                    for i in range(first, min(first + batch, s.jobs))]))
        except BaseException as exc:  # the caller raises it
            self.error = exc


@dataclass
class Cut:
    """What happened around the cut: the calls it held, when it came and went, each log's
    size at the heal, and when each worker host took its first job after the heal."""

    held: set[str]
    at: datetime
    lasted_s: float
    taken_over_s: float  # from the cut until each held job was started again (nan: never)
    healed_at: datetime
    logs: dict[str, Path]
    offsets: dict[str, int]
    resumed_s: dict[str, float] = field(default_factory=dict)
    _healed: float = field(default_factory=time.monotonic)

    def note_resumed(self) -> None:
        for host, log in self.logs.items():
            if host not in self.resumed_s and _received(_since(log, self.offsets[host])) - \
                    self.held:
                self.resumed_s[host] = time.monotonic() - self._healed


def _cut_and_heal(net: Network, farm: Farm, scenario: Scenario, logs: dict[str, Path],
                  producer: Producer) -> Cut:
    time.sleep(max(0.0, producer.t0 + scenario.cut_at_s - time.monotonic()))
    held_logs = [logs[host] for host in scenario.cut_hosts]
    held: set[str] = set()
    if scenario.fault is Fault.SERVER:  # read first: the jobs table is out of reach next
        held = set().union(*(calls_under_way(farm.engine, log, list(producer.ids))
                             for log in held_logs))
    cut_at, cut_mono = datetime.now(UTC), time.monotonic()
    _cut(net, scenario.fault, heal=False)
    try:
        if scenario.fault is not Fault.SERVER:
            # read once w1 is cut: it can no longer start or finish a job, and no other
            # worker may take one of its jobs before the lease runs out (w1's log is a file
            # of this machine, readable here)
            held = calls_under_way(farm.engine, held_logs[0], list(producer.ids))
        taken_over_s = _hold_cut(farm, scenario, held, cut_mono)
    finally:
        _cut(net, scenario.fault, heal=True)
    return Cut(held=held, at=cut_at, lasted_s=time.monotonic() - cut_mono,
               taken_over_s=taken_over_s, healed_at=datetime.now(UTC), logs=logs,
               offsets={host: log.stat().st_size for host, log in logs.items()})


def _cut(net: Network, fault: Fault, *, heal: bool) -> None:
    if fault is Fault.SERVICES:
        (net.heal_between if heal else net.cut_between)("w1", "server")
    else:
        (net.heal if heal else net.cut)("server" if fault is Fault.SERVER else "w1")


def _hold_cut(farm: Farm, scenario: Scenario, held: set[str], cut_mono: float) -> float:
    """Until the cut has lasted ``cut_s`` and, when a worker host is cut, every one of its
    held jobs was started again elsewhere (or ``timeout_s`` passed); the seconds from the
    cut to that takeover (nan: not all were taken over)."""
    taken_over = math.nan
    held_ids = [uuid.UUID(job) for job in held]
    until = cut_mono + scenario.cut_s
    deadline = cut_mono + max(scenario.cut_s, scenario.timeout_s)
    while scenario.fault is not Fault.SERVER and math.isnan(taken_over) and held_ids and \
            time.monotonic() < deadline:
        with farm.engine.connect() as conn:
            left = conn.execute(text("select count(*) from jobs where id = any(:ids) "
                                     "and attempts < 2"), {"ids": held_ids}).scalar_one()
        if left == 0:
            taken_over = time.monotonic() - cut_mono
        else:
            time.sleep(0.2)
    time.sleep(max(0.0, until - time.monotonic()))
    return taken_over


def _since(log: Path, offset: int) -> str:
    """The complete lines written to ``log`` after its first ``offset`` bytes."""
    with open(log, "rb") as f:
        f.seek(offset)
        content = f.read().decode(errors="replace")
    return content[: content.rfind("\n") + 1]


def _received(log: str) -> set[str]:
    return {m[1] for m in TASK_LINE.finditer(log) if m[2] == "received"}


def _ran(log: str) -> set[str]:
    """The jobs whose delivery ended with their result recorded as theirs (not a late result
    superseded, not a repeated delivery of a finished job)."""
    return ended(log, "succeeded") - {m[1] for m in NOT_OWN.finditer(log)}


def _took(log: str) -> set[str]:
    """The jobs the log shows taken (received) and run (``_ran``)."""
    return _received(log) & _ran(log)


def measure(scenario: Scenario, farm: Farm, ids: list[uuid.UUID], cut: Cut, unsettled: int,
            sim: str) -> Figures:
    params = {"ids": ids, "held": [uuid.UUID(job) for job in cut.held]}
    with farm.engine.connect() as conn:
        def one(sql: str) -> Any:
            return conn.execute(text(sql), params).scalar_one()

        def counts(sql: str) -> dict[str, int]:
            return {str(k): int(n) for k, n in conn.execute(text(sql), params).all()}

        by_status = counts("select status, count(*) from jobs where id = any(:ids) group by 1")
        finished = conn.execute(text("select finished_at from jobs where id = any(:ids)"),
                                params).scalars().all()
        held_done = one("select max(finished_at) from jobs where id = any(:held)")
        last_attempt = one("select max(finished_at) from attempts where job_id = any(:ids)")
        doubled = one("select count(*) from (select job_id from attempts where job_id = "
                      "any(:ids) and outcome = 'ok' group by job_id having count(*) >= 2) d")
        marked = one("select count(*) from jobs where id = any(:ids) and status = 'succeeded' "
                     "and (error is not null or wait_reason is not null or next_run_at is not "
                     "null)")
        rerun = one("select count(*) from jobs where id = any(:held) and attempts >= 2")
        outcomes = counts("select outcome, count(*) from attempts where job_id = any(:ids) "
                          "group by 1")
        superseded = counts(
            "select split_part(error, ' of attempt', 1) || (case when cost_usd is null "
            "then ', cost unknown' else ', cost known' end), count(*) from attempts "
            "where job_id = any(:ids) and outcome = 'superseded' group by 1")
        cost_unknown = one("select count(*) from jobs where id = any(:ids) and cost_unknown")
    stats = httpx2.get(f"{sim}/_sim/stats").json()

    def since(at: datetime | None, start: datetime) -> float:
        return (at - start).total_seconds() if at else math.nan

    after = [at for at in finished if at and at > cut.healed_at]
    return Figures(
        scenario=scenario, submitted=len(ids), by_status=by_status,
        held_at_cut=len(cut.held), rerun=int(rerun), cut_for_s=cut.lasted_s,
        taken_over_s=cut.taken_over_s, held_done_s=since(held_done, cut.at),
        resumed_s=dict(cut.resumed_s), ran={}, ran_after_heal={},
        finished_after_heal=len(after),
        first_job_after_heal_s=since(min(after, default=None), cut.healed_at),
        last_job_after_heal_s=since(max(after, default=None), cut.healed_at),
        last_attempt_after_heal_s=since(last_attempt, cut.healed_at),
        doubled=int(doubled), marked=int(marked), provider_calls=int(stats["messages_requests"]),
        attempts_by_outcome=outcomes, unsettled=unsettled, superseded=superseded,
        cost_unknown=int(cost_unknown),
    )
