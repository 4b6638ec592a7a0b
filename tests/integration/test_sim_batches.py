"""The simulator's Message Batches API driven by the official ``anthropic`` SDK over real HTTP
(client.messages.batches.*), its bill in /_sim/stats, and the minimum cacheable length."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types import Message
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from tests_sim import admin, in_process_sim

from farm.costs.pricing import cost, default_pricebook
from farm.jobs import Usage
from farm.sim import batch_wire

ROOT = Path(__file__).resolve().parents[2]
HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-4-5"
FAST: dict[str, Any] = {"ttft_s": 0.0, "output_tokens_per_s": 100_000.0, "fixed_latency_s": None,
        "rpm_limit": None, "itpm_limit": None, "otpm_limit": None, "model_limits": {},
        "seed": 0, "require_api_key": True, "batch_processing_s": 0.3}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The simulator on a free port, served by an event loop on a background thread."""
    with in_process_sim(**FAST) as url:
        yield url




@pytest.fixture
def url(server: str) -> str:
    admin(server, "/_sim/config", FAST)
    admin(server, "/_sim/reset", {})
    return server


@pytest.fixture
def client(url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=url, api_key="test-key", max_retries=0) as c:
        yield c


def params(text: str, model: str = HAIKU, **kw: Any) -> Any:  # the SDK's TypedDict, or not
    return {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": text}],
            **kw}


def ended(client: anthropic.Anthropic, batch_id: str, within_s: float = 20.0) -> MessageBatch:
    deadline = time.monotonic() + within_s
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, f"{batch_id} still {batch.processing_status}"
        time.sleep(0.05)
    return batch


def results(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    found = list(client.messages.batches.results(batch_id))
    assert all(isinstance(r, MessageBatchIndividualResponse) for r in found)
    by_id = {r.custom_id: r.result for r in found}
    assert len(by_id) == len(found)
    return by_id


def test_create_then_in_progress_then_ended_with_counts_and_results(
        url: str, client: anthropic.Anthropic) -> None:
    prompts = {f"q-{i}": f"Tell me about the number {i}." for i in range(6)}
    batch = client.messages.batches.create(requests=[
        {"custom_id": cid, "params": params(text)} for cid, text in prompts.items()])
    assert isinstance(batch, MessageBatch) and batch.type == "message_batch"
    assert batch.id.startswith("msgbatch_") and batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 6 and batch.request_counts.succeeded == 0
    assert batch.results_url is None and batch.ended_at is None
    assert batch.cancel_initiated_at is None and batch.archived_at is None
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600
    done = ended(client, batch.id)
    counts = done.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled,
            counts.expired) == (0, 6, 0, 0, 0)
    assert done.ended_at is not None and done.ended_at >= done.created_at
    assert done.results_url == f"{url}/v1/messages/batches/{batch.id}/results"
    got = results(client, batch.id)
    assert set(got) == set(prompts)
    for cid, text in prompts.items():
        result = got[cid]
        assert result.type == "succeeded" and isinstance(result.message, Message)
        sync = client.messages.create(**params(text))  # the same generation as /v1/messages
        assert result.message.content == sync.content and result.message.usage == sync.usage
        assert result.message.stop_reason == sync.stop_reason
    stats = admin(url, "/_sim/stats")
    assert stats["batches"] == {"created": 1, "requests": 6, "succeeded": 6, "errored": 0,
                                "expired": 0, "canceled": 0}
    assert stats["successful_calls"] == 6  # the 6 synchronous calls only


def test_results_are_jsonl_in_a_fixed_shuffled_order(url: str,
                                                     client: anthropic.Anthropic) -> None:
    ids = [f"r{i}" for i in range(12)]
    batch = client.messages.batches.create(requests=[
        {"custom_id": cid, "params": params("hi")} for cid in ids])
    ended(client, batch.id)
    served = [r.custom_id for r in client.messages.batches.results(batch.id)]
    assert served == [ids[i] for i in batch_wire.result_order(0, ids)] and served != ids
    raw = urllib.request.Request(f"{url}/v1/messages/batches/{batch.id}/results",
                                 headers={"x-api-key": "k"})
    with urllib.request.urlopen(raw, timeout=10) as response:
        assert response.headers["content-type"] == "application/x-jsonl"
        lines = response.read().decode().splitlines()
    assert [json.loads(line)["custom_id"] for line in lines] == served
    raw.add_header("accept", "application/binary")
    with urllib.request.urlopen(raw, timeout=10) as response:
        assert response.headers["content-type"] == "application/binary"


def test_errored_and_expired_requests(url: str, client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[
        {"custom_id": "ok", "params": params("hello")},
        {"custom_id": "boom", "params": params("[[sim:status=500]] hello")},
        {"custom_id": "bad", "params": params("[[sim:status=400]]")},
        {"custom_id": "late", "params": params("[[sim:batch_expire]] hello")},
        {"custom_id": "zero", "params": params("hello", max_tokens=0)},
        {"custom_id": "gpt", "params": params("hello", model="gpt-4o")}])
    counts = ended(client, batch.id).request_counts
    assert (counts.succeeded, counts.errored, counts.expired, counts.canceled) == (1, 4, 1, 0)
    got = results(client, batch.id)
    assert got["ok"].type == "succeeded" and got["late"].type == "expired"
    errors = {cid: got[cid] for cid in ("boom", "bad", "zero", "gpt")}
    assert all(r.type == "errored" and r.error.type == "error" for r in errors.values())
    assert {cid: r.error.error.type for cid, r in errors.items()} == {
        "boom": "api_error", "bad": "invalid_request_error", "zero": "invalid_request_error",
        "gpt": "not_found_error"}
    assert "max_tokens" in errors["zero"].error.error.message
    stats = admin(url, "/_sim/stats")["batches"]
    assert (stats["succeeded"], stats["errored"], stats["expired"]) == (1, 4, 1)


def test_cancel_ends_what_was_not_processed_as_canceled(url: str,
                                                        client: anthropic.Anthropic) -> None:
    admin(url, "/_sim/config", {"batch_processing_s": 10.0})  # one request due per second
    batch = client.messages.batches.create(requests=[
        {"custom_id": f"c{i}", "params": params("hi")} for i in range(10)])
    time.sleep(1.5)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None and canceling.request_counts.processing == 10
    done = ended(client, batch.id, within_s=5)
    assert done.cancel_initiated_at == canceling.cancel_initiated_at
    counts = done.request_counts
    # exactly the requests due before the cancel were processed
    due = batch_wire.due_count(10, batch.created_at.timestamp(), 10.0,
                               canceling.cancel_initiated_at.timestamp())
    assert 1 <= due < 10 and (counts.succeeded, counts.canceled) == (due, 10 - due)
    got = results(client, batch.id)
    assert sorted(r.type for r in got.values()) == ["canceled"] * (10 - due) + [
        "succeeded"] * due
    with pytest.raises(anthropic.BadRequestError, match="already ended"):
        client.messages.batches.cancel(batch.id)
    assert admin(url, "/_sim/stats")["batches"]["canceled"] == 10 - due


def test_list_pagination_newest_first(url: str, client: anthropic.Anthropic) -> None:
    admin(url, "/_sim/config", {"batch_processing_s": 600.0})
    made = [client.messages.batches.create(requests=[
        {"custom_id": "only", "params": params(f"batch {i}")}]).id for i in range(5)]
    newest = made[::-1]
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == newest[:2] and first.has_more
    assert (first.first_id, first.last_id) == (newest[0], newest[1])
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest  # auto-pages
    after = client.messages.batches.list(limit=2, after_id=newest[1])
    assert [b.id for b in after.data] == newest[2:4] and after.has_more
    last = client.messages.batches.list(limit=2, after_id=newest[3])
    assert [b.id for b in last.data] == newest[4:] and not last.has_more
    before = client.messages.batches.list(limit=2, before_id=newest[3])
    assert [b.id for b in before.data] == newest[1:3] and before.has_more
    assert [b.id for b in client.messages.batches.list(before_id=newest[4])] == newest[:4]
    assert [b.id for b in client.messages.batches.list().data] == newest  # default limit 20
    with pytest.raises(anthropic.BadRequestError, match="limit"):
        client.messages.batches.list(limit=1001)
    with pytest.raises(anthropic.BadRequestError, match="after_id: no message batch"):
        client.messages.batches.list(after_id="msgbatch_01nope")


@pytest.mark.parametrize(("requests", "named"), [
    ([{"custom_id": "a", "params": params("x")}, {"custom_id": "a", "params": params("y")}],
     "requests.1.custom_id: duplicate custom_id 'a'"),
    ([{"custom_id": "no spaces", "params": params("x")}],
     "requests.0.custom_id: String should match pattern"),
    ([{"custom_id": "x" * 65, "params": params("x")}],
     "requests.0.custom_id: String should match pattern"),
    ([{"custom_id": "a", "params": params("x", stream=True)}], "requests.0.params.stream"),
    ([], "requests: List should have at least 1 item"),
])
def test_a_bad_batch_is_a_400_naming_the_problem(url: str, client: anthropic.Anthropic,
                                                 requests: list[Any], named: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.batches.create(requests=requests)
    assert named in err.value.message
    assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert err.value.request_id is not None and err.value.request_id.startswith("req_")
    assert admin(url, "/_sim/stats")["batches"]["created"] == 0
    assert client.messages.batches.list().data == []


def test_unknown_batches_unfinished_results_and_missing_key(url: str,
                                                            client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError, match="msgbatch_01nope"):
        client.messages.batches.retrieve("msgbatch_01nope")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.cancel("msgbatch_01nope")
    admin(url, "/_sim/config", {"batch_processing_s": 600.0})
    batch = client.messages.batches.create(requests=[{"custom_id": "a", "params": params("x")}])
    with pytest.raises(anthropic.AnthropicError, match="results_url"):  # the SDK's own check
        client.messages.batches.results(batch.id)
    with pytest.raises(anthropic.BadRequestError, match="has not ended"):
        client.get(f"/v1/messages/batches/{batch.id}/results", cast_to=object)
    with pytest.raises(anthropic.BadRequestError, match="still processing"):
        client.messages.batches.delete(batch.id)
    request = urllib.request.Request(f"{url}/v1/messages/batches/{batch.id}")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10).close()
    with err.value as response:
        assert response.status == 401
        assert json.load(response)["error"]["type"] == "authentication_error"


def test_delete_an_ended_batch(url: str, client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[{"custom_id": "a", "params": params("x")}])
    ended(client, batch.id)
    deleted = client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def post_raw(url: str, headers: str, body: bytes = b"") -> tuple[bytes, dict[str, Any]]:
    """POST /v1/messages/batches over a bare socket: (the reply's head, its JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((f"POST /v1/messages/batches HTTP/1.1\r\nHost: {host}\r\nx-api-key: k"
                      f"\r\ncontent-type: application/json\r\n{headers}\r\n").encode() + body)
        reply = b""
        while chunk := sock.recv(65536):  # the server answers, then closes the connection
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return head, json.loads(payload)


def test_a_body_over_256_mb_is_413_before_it_is_read(url: str) -> None:
    head, body = post_raw(url, f"content-length: {batch_wire.MAX_BODY_BYTES + 1}\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"Connection: close" in head
    error = body["error"]
    assert error["type"] == "request_too_large" and "256 MB" in error["message"]


def test_a_streamed_body_is_413_once_it_passes_the_limit(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_wire, "MAX_BODY_BYTES", 1000)  # the server runs in this process
    chunk = b"258\r\n" + b" " * 600 + b"\r\n"  # 0x258 = 600 bytes, no length announced
    head, body = post_raw(url, "transfer-encoding: chunked\r\n", chunk * 3 + b"0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and body["error"]["type"] == "request_too_large"
    monkeypatch.undo()
    good = json.dumps({"requests": [{"custom_id": "a", "params": params("x")}]}).encode()
    head, body = post_raw(url, f"content-length: {len(good)}\r\nconnection: close\r\n", good)
    assert head.startswith(b"HTTP/1.1 200") and body["type"] == "message_batch"


def test_batches_skip_the_rate_limits_and_bill_at_half_price(
        url: str, client: anthropic.Anthropic) -> None:
    admin(url, "/_sim/config", {"model_limits": {HAIKU: {"rpm": 1}, SONNET: {"rpm": 1}}})
    system = [{"type": "text", "text": "policy " * 1000,  # 1750 tokens, cached 1 h
               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    batch = client.messages.batches.create(requests=[
        {"custom_id": "h1", "params": params("one")},
        {"custom_id": "h2", "params": params("a 300 words story")},
        {"custom_id": "s1", "params": params("first", SONNET, system=system)},
        {"custom_id": "s2", "params": params("second", SONNET, system=system)}])
    assert ended(client, batch.id).request_counts.succeeded == 4  # rpm 1 did not hold them
    got = results(client, batch.id)
    usage = {cid: got[cid].message.usage for cid in got}
    assert usage["s1"].cache_creation.ephemeral_1h_input_tokens == 1750  # the shared cache
    assert usage["s2"].cache_read_input_tokens == 1750
    sync = client.messages.with_raw_response.create(**params("sync"))  # its bucket is full
    assert sync.headers["anthropic-ratelimit-requests-remaining"] == "0"
    book = default_pricebook()

    def priced(model: str, u: Any, batch: bool) -> Decimal:
        split = u.cache_creation
        return cost(book[model], Usage(
            input_tokens=u.input_tokens, output_tokens=u.output_tokens,
            cache_creation_input_tokens=u.cache_creation_input_tokens,
            cache_read_input_tokens=u.cache_read_input_tokens,
            cache_creation_5m_input_tokens=split.ephemeral_5m_input_tokens,
            cache_creation_1h_input_tokens=split.ephemeral_1h_input_tokens), batch=batch)

    batch_bill = sum((priced(got[cid].message.model, u, True) for cid, u in usage.items()),
                     Decimal(0))
    full = sum((priced(got[cid].message.model, u, False) for cid, u in usage.items()),
               Decimal(0))
    assert batch_bill == full / 2 and batch_bill > 0
    # s1 by hand: sonnet 3 in / 15 out / 6 1h-write per MTok, halved
    s1 = usage["s1"]
    assert priced(SONNET, s1, True) == (Decimal(3) * s1.input_tokens + Decimal(15) * (
        s1.output_tokens) + Decimal(6) * 1750) / 2_000_000
    stats = admin(url, "/_sim/stats")
    assert Decimal(stats["billed_batch_usd"]) == batch_bill
    sync_bill = priced(HAIKU, sync.parse().usage, False)
    assert Decimal(stats["billed_usd"]) == batch_bill + sync_bill


def test_minimum_cacheable_length(client: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": "r" * 6000,  # 1500 tokens
               "cache_control": {"type": "ephemeral"}}]
    for model in ("claude-sonnet-4", SONNET):
        first = client.messages.create(**params("q1", model, system=system))
        second = client.messages.create(**params("q2", model, system=system))
        assert first.usage.cache_creation_input_tokens == 1500
        assert second.usage.cache_read_input_tokens == 1500
    for _ in range(2):  # below claude-haiku-4-5's 4096: neither written nor read, no error
        small = client.messages.create(**params("q1", HAIKU, system=system))
        assert small.usage.cache_creation_input_tokens == 0
        assert small.usage.cache_read_input_tokens == 0
        assert small.usage.input_tokens == first.usage.input_tokens + 1500


def test_reset_clears_the_batches(url: str, client: anthropic.Anthropic) -> None:
    admin(url, "/_sim/config", {"batch_processing_s": 600.0})
    batch = client.messages.batches.create(requests=[{"custom_id": "a", "params": params("x")}])
    cleared = admin(url, "/_sim/reset", {})
    assert cleared["batches"]["created"] == 0 and cleared["billed_usd"] == "0"
    assert client.messages.batches.list().data == []
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_processing_time_is_a_runtime_setting(url: str) -> None:
    assert admin(url, "/_sim/config", {"batch_processing_s": 0})["batch_processing_s"] == 0
    with pytest.raises(urllib.error.HTTPError) as err:
        admin(url, "/_sim/config", {"batch_processing_s": -1})
    with err.value as response:
        assert response.status == 400 and "batch_processing_s" in json.load(response)["error"]


def test_farm_sim_serves_batches_with_its_processing_time() -> None:
    """`farm sim --batch-processing-s` as a process: the SDK's whole batch flow on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "farm.cli", "sim", "--port", str(port), "--ttft", "0",
            "--batch-processing-s", "0.2"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("farm simulator listening on")
        base = f"http://127.0.0.1:{port}"
        try:
            assert admin(base, "/_sim/config")["batch_processing_s"] == 0.2
            with anthropic.Anthropic(base_url=base, api_key="k", max_retries=0) as c:
                batch = c.messages.batches.create(requests=[
                    {"custom_id": "a", "params": params("hi")}])
                assert ended(c, batch.id).request_counts.succeeded == 1
                assert results(c, batch.id)["a"].type == "succeeded"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
