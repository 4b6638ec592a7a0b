"""`farm workers` against a real Redis: every live worker process from its pool heartbeat
(written here by the real Heartbeat), as a table and as JSON; the heartbeat's ``@`` fields
read back typed, and the readers of the pool's fields (`parse`, the snapshot) unchanged by
them."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from farm.cli.main import main
from farm.cli.workers import EMPTY, duration
from farm.observe import heartbeat
from farm.observe.heartbeat import Heartbeat, WorkerBeat, read_all
from farm.observe.snapshot import pool_use


@pytest.fixture
def env(broker_url: str, database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"FARM_BROKER_URL": broker_url, "FARM_DATABASE_URL": database_url,
            "FARM_DATA_DIR": str(tmp_path)}


def farm(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def info(state: str = "ready", jobs: int = 7) -> dict[str, str]:
    return {"slots_min": "10", "slots_max": "100", "state": state, "health_port": "9300",
            "jobs_done": str(jobs)}


def test_no_live_worker_says_so(env: dict[str, str]) -> None:
    assert farm(env, "workers") == (0, EMPTY + "\n")
    code, out = farm(env, "workers", "--json")
    assert code == 0 and json.loads(out) == {"workers": []}


def test_every_live_worker_is_listed_with_its_figures(client: redis.Redis,
                                                      env: dict[str, str]) -> None:
    started = time.time() - 3725  # up 1h02m
    haiku = Heartbeat(client, lambda: {"haiku-simple": (40, 30)}, 9200, host="host-a",
                      pid=101, info=info, started_at=started, rss=lambda: 212.4)
    intake = Heartbeat(client, lambda: {"farm-intake": (8, 1), "sonnet-complex": (8, 2)},
                       None, host="host-b", pid=202, info=lambda: info("draining", 500),
                       rss=lambda: None)
    haiku.beat()
    intake.beat()
    legacy = heartbeat.key("host-c", 303)  # an older farm's worker: the pool's fields only
    client.hset(legacy, mapping=heartbeat.fields({"haiku-simple": (20, 5)}, None))
    client.expire(legacy, heartbeat.TTL_S - 4)  # its last beat 4 s ago

    code, out = farm(env, "workers")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].strip() == "3 live workers on 3 hosts: 68 slots, 38 busy (56%)"
    head = next(n for n, text in enumerate(lines) if "host" in text and "pid" in text)
    for column in ("queues", "slots (min-max)", "busy", "util", "RSS MB", "uptime",
                   "last beat", "jobs done", "state"):
        assert column in lines[head]
    rows = {text.split()[1]: text for text in lines if text.startswith("│")}
    assert set(rows) == {"host-a", "host-b", "host-c"}

    def cells(host: str) -> list[str]:
        return [c.strip() for c in rows[host].strip("│").split("│")]

    assert cells("host-a") == ["host-a", "101", "haiku-simple", "40 (10-100)", "30", "75%",
                               "212", "1h02m", "0s ago", "7", "ready"]
    b = cells("host-b")
    assert b[:6] == ["host-b", "202", "farm-intake,sonnet-complex", "8 (10-100)", "3",
                     "38%"]
    assert b[6] == "-" and b[8] == "0s ago" and b[9:] == ["500", "draining"]
    assert cells("host-c") == ["host-c", "303", "haiku-simple", "20", "5", "25%", "-", "-",
                               "4s ago", "-", "-"]

    code, out = farm(env, "workers", "--json")
    assert code == 0, out
    found = {w["host"]: w for w in json.loads(out)["workers"]}
    a = found["host-a"]
    assert a["pid"] == 101 and a["queues"] == ["haiku-simple"] and a["state"] == "ready"
    assert a["pool"] == {"haiku-simple": {"slots": 40, "busy": 30}}
    assert (a["slots"], a["slots_min"], a["slots_max"], a["busy"]) == (40, 10, 100, 30)
    assert a["utilisation"] == 0.75 and a["rss_mb"] == 212.4 and a["jobs_done"] == 7
    assert a["metrics_port"] == 9200 and a["health_port"] == 9300
    assert 3725 <= a["uptime_s"] < 3735 and 0 <= a["beat_age_s"] < 5
    assert abs(a["started_at"] - started) < 0.01 and abs(a["beat_at"] - time.time()) < 5
    assert found["host-b"]["busy"] == 3 and found["host-b"]["rss_mb"] is None
    c = found["host-c"]
    assert (c["pid"], c["state"], c["uptime_s"], c["slots_min"]) == (303, None, None, None)
    assert 3.5 <= c["beat_age_s"] < 6
    haiku.stop()
    intake.stop()
    client.delete(legacy)
    assert farm(env, "workers") == (0, EMPTY + "\n")


def test_a_beat_with_info_writes_the_process_fields(client: redis.Redis) -> None:
    beat = Heartbeat(client, lambda: {"haiku-simple": (10, 2)}, None, info=info)
    beat.beat()
    raw = {k.decode(): v.decode() for k, v in client.hgetall(beat.key).items()}
    assert raw["haiku-simple"] == "10 2"
    assert raw["@host"] == socket.gethostname() and raw["@pid"] == str(os.getpid())
    assert {k: raw[f"@{k}"] for k in info()} == info()
    assert abs(float(raw["@beat_at"]) - time.time()) < 5
    assert float(raw["@started_at"]) <= float(raw["@beat_at"])
    assert float(raw["@rss_mb"]) > 10  # this test process's resident memory, MB
    # the pool's readers see the pool only
    assert heartbeat.parse(client.hgetall(beat.key)) == ({"haiku-simple": (10, 2)}, None)
    assert pool_use(client) == {"haiku-simple": (10, 2)}
    [read] = read_all(client)
    assert (read.host, read.pid, read.state, read.slots, read.busy) == (
        socket.gethostname(), os.getpid(), "ready", 10, 2)
    beat.stop()
    assert read_all(client) == []


def test_without_info_a_beat_is_the_pools_alone(client: redis.Redis) -> None:
    beat = Heartbeat(client, lambda: {"haiku-simple": (4, 0)}, 9464)
    beat.beat()
    assert client.hgetall(beat.key) == {b"haiku-simple": b"4 0", b"metrics_port": b"9464"}
    beat.stop()


def test_an_info_that_fails_leaves_its_fields_out_and_the_beat_goes_on(
        client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict[str, str]:
        raise RuntimeError("pool not built yet")

    beat = Heartbeat(client, lambda: {"farm-intake": (8, 0)}, None, info=broken)
    beat.beat()
    [read] = read_all(client)
    assert read.pool == {"farm-intake": (8, 0)} and read.state is None
    assert read.pid == os.getpid() and read.beat_at is not None
    assert "the worker's info failed: RuntimeError" in caplog.text
    beat.stop()


def test_a_heartbeat_reads_back_typed_and_tolerates_what_does_not_parse() -> None:
    raw = {b"haiku-simple": b"40 3", b"metrics_port": b"9200", b"@host": b"h",
           b"@pid": b"12", b"@started_at": b"100.5", b"@beat_at": b"160.5",
           b"@rss_mb": b"?", b"@state": b"draining", b"@slots_min": b"x",
           b"@slots_max": b"100", b"@future": b"1 2", b"@jobs_done": b"9"}
    beat = WorkerBeat.of(b"farm:pool:ignored:1", raw, ttl_ms=27_000)
    assert beat.pool == {"haiku-simple": (40, 3)} and beat.metrics_port == 9200
    assert (beat.host, beat.pid, beat.state, beat.jobs_done) == ("h", 12, "draining", 9)
    assert beat.rss_mb is None and beat.slots_min is None and beat.slots_max == 100
    assert beat.beat_age_s == pytest.approx(3.0) and beat.uptime_s == pytest.approx(63.0)
    assert beat.meta["future"] == "1 2"
    # a name in the key, nothing else: host and pid from the key (a host name may hold ":")
    bare = WorkerBeat.of("farm:pool:node:7:4242", {})
    assert (bare.host, bare.pid, bare.slots, bare.busy, bare.utilisation) == (
        "node:7", 4242, 0, 0, None)
    assert bare.beat_age_s is None and bare.uptime_s is None
    assert heartbeat.parse(raw) == ({"haiku-simple": (40, 3)}, 9200)


def test_durations() -> None:
    assert [duration(s) for s in (None, 0, 59.9, 60, 3599, 3600, 3725, 86399, 90061)] == [
        "-", "0s", "59s", "1m00s", "59m59s", "1h00m", "1h02m", "23h59m", "1d01h"]
