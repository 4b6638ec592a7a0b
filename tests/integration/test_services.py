"""The embedded services: start, reuse, status, stop (in a data dir of their own)."""

from __future__ import annotations

from pathlib import Path

import psycopg
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
