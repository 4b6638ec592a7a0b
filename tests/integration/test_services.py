"""The embedded services: start, reuse, status, stop (in a data dir of their own)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import redis

from farm import services


def test_up_reuses_and_down_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "farm-data"
    try:
        first = services.up(data_dir)
        assert services.status(data_dir) == {"valkey": True, "postgres": True}
        assert services.up(data_dir) == first  # reused, same ports
        assert services.read_endpoints(data_dir) == first
        client = redis.Redis.from_url(first.broker_url)
        try:
            assert client.ping()
            assert client.config_get("appendonly")["appendonly"] == "yes"
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        finally:
            client.close()
        dsn = first.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select current_database()").fetchone() == ("farm",)
    finally:
        stopped = services.down(data_dir)
    assert sorted(stopped) == ["postgres", "valkey"]
    assert services.status(data_dir) == {"valkey": False, "postgres": False}
    assert services.down(data_dir) == []


def test_a_script_anywhere_finds_the_running_embedded_services(tmp_path: Path) -> None:
    """Without FARM_DATA_DIR, `farm up` and a script started in another directory agree on
    where the embedded services are (one folder per user), so the script connects."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "ANTHROPIC_"))}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    here, elsewhere = tmp_path / "clone", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()

    def farm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)

    data_dir = tmp_path / "xdg" / "farm"
    try:
        assert farm("up", cwd=here).returncode == 0
        assert farm("migrate", cwd=here).returncode == 0
        script = ("from farm.client import Farm\n"
                  "with Farm() as f:\n"
                  "    print(f.settings.data_dir, len(f.report()))\n")
        done = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[0] == str(data_dir)
    finally:
        services.down(data_dir)
    # where no services were ever started, the error names the folder it looked in and
    # what to do
    env["XDG_DATA_HOME"] = str(tmp_path / "nothing-here")
    missing = farm("report", cwd=elsewhere)
    assert missing.returncode == 1
    assert str(tmp_path / "nothing-here" / "farm") in missing.stderr
    assert "FARM_DATA_DIR" in missing.stderr and "Traceback" not in missing.stderr


def test_embedded_services_require_the_credentials_made_at_up(tmp_path: Path) -> None:
    """Valkey and PostgreSQL are not open to every local user: `up` makes a password for
    each, kept in services.json readable by its owner only, never on a command line."""
    import json
    import stat

    data_dir = tmp_path / "farm-data"
    try:
        endpoints = services.up(data_dir)
        state_file = data_dir / services.STATE_FILE
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        state = json.loads(state_file.read_text())
        vpw, ppw = state["valkey_password"], state["postgres_password"]
        assert len(vpw) >= 24 and len(ppw) >= 24 and vpw != ppw
        assert services.read_endpoints(data_dir) == endpoints
        port = state["valkey_port"]
        anonymous = redis.Redis(host="127.0.0.1", port=port)
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                anonymous.ping()
        finally:
            anonymous.close()
        client = redis.Redis.from_url(endpoints.broker_url)
        try:
            assert client.ping()
        finally:
            client.close()
        dsn = endpoints.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        without = f"postgresql://postgres@127.0.0.1:{state['postgres_port']}/farm"
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(without, connect_timeout=5)
        # no process shows a password on its command line (`ps`)
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                assert vpw not in cmdline and ppw not in cmdline
        # a restart keeps them
        services.down(data_dir)
        assert services.up(data_dir) == endpoints
    finally:
        services.down(data_dir)
