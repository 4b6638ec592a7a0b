"""The simulator driven by the real ``anthropic`` SDK over real HTTP (no Redis/Postgres needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from tests_sim import admin, in_process_sim

ROOT = Path(__file__).resolve().parents[2]
MODEL = "claude-haiku-4-5"
FAST = {"ttft_s": 0.005, "output_tokens_per_s": 100_000.0, "fixed_latency_s": None,
        "rpm_limit": None, "itpm_limit": None, "otpm_limit": None, "fault_529_rate": 0.0,
        "fault_500_rate": 0.0, "overload_until": None, "require_api_key": True, "seed": 0,
        "model_limits": {}, "overload_models": {}, "burst_s": None}
SONNET = "claude-sonnet-5-5"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The simulator on a free port, served by an event loop on a background thread."""
    with in_process_sim(**FAST) as url:
        yield url




@pytest.fixture
def url(server: str) -> str:
    """The server with default (fast) settings and zeroed counters."""
    admin(server, "/_sim/config", FAST)
    admin(server, "/_sim/reset", {})
    return server


@pytest.fixture
def client(url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=url, api_key="test-key", max_retries=0) as c:
        yield c


def ask(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 300, "messages": [{"role": "user", "content": text}],
            **kw}


def test_message_wire_format_and_determinism(client: anthropic.Anthropic) -> None:
    first = client.messages.create(**ask("Tell me about bees."))
    again = client.messages.create(**ask("Tell me about bees."))
    assert first.id.startswith("msg_") and first.id != again.id
    assert first._request_id is not None and first._request_id.startswith("req_")
    assert first.type == "message" and first.role == "assistant" and first.model == MODEL
    assert first.stop_reason == "end_turn" and first.stop_sequence is None
    assert first.content[0].type == "text" and first.content[0].text
    assert first.content == again.content and first.usage == again.usage
    usage = first.usage
    assert usage.input_tokens > 0 and 16 <= usage.output_tokens < 300
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0
    assert usage.cache_creation is not None and usage.cache_creation.ephemeral_5m_input_tokens == 0
    assert usage.service_tier == "standard"


def test_max_tokens_stop(client: anthropic.Anthropic) -> None:
    message = client.messages.create(**ask("Write a detailed 2000 words essay", max_tokens=40))
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 40


def test_streaming_matches_non_streaming(client: anthropic.Anthropic) -> None:
    plain = client.messages.create(**ask("Write a short poem about rivers."))
    with client.messages.stream(**ask("Write a short poem about rivers.")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
        assert (stream.request_id or "").startswith("req_")
        assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert len(pieces) > 1 and "".join(pieces) == plain.content[0].text
    assert final.content[0].type == "text" and final.content[0].text == plain.content[0].text
    assert final.stop_reason == plain.stop_reason and final.usage == plain.usage


def test_raw_stream_events(client: anthropic.Anthropic) -> None:
    kinds = [e.type for e in client.messages.create(**ask("hello"), stream=True)]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "content_block_delta" in kinds


def test_count_tokens(client: anthropic.Anthropic) -> None:
    body = ask("How many tokens is this?", system="You are terse.")
    counted = client.messages.count_tokens(model=MODEL, system=body["system"],
                                           messages=body["messages"])
    assert counted.input_tokens == client.messages.create(**body).usage.input_tokens


def test_prompt_cache_write_then_read(client: anthropic.Anthropic) -> None:
    # 4500 tokens: above claude-haiku-4-5's minimum cacheable length (4096)
    system = [{"type": "text", "text": "rules " * 3000, "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(**ask("q1", system=system))
    second = client.messages.create(**ask("q2", system=system))
    assert first.usage.cache_creation_input_tokens == 4500 == second.usage.cache_read_input_tokens
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == 4500
    assert second.usage.cache_creation_input_tokens == 0
    hour = [{"type": "text", "text": "other " * 3000, "cache_control": {"type": "ephemeral",
                                                                         "ttl": "1h"}}]
    third = client.messages.create(**ask("q3", system=hour))
    assert third.usage.cache_creation is not None
    assert third.usage.cache_creation.ephemeral_1h_input_tokens == 4500


def test_bad_requests(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as empty:
        client.messages.create(model=MODEL, max_tokens=10, messages=[])
    assert "messages" in empty.value.message
    with pytest.raises(anthropic.BadRequestError) as zero:
        client.messages.create(**ask("hi", max_tokens=0))
    assert "max_tokens" in zero.value.message
    with pytest.raises(anthropic.BadRequestError) as marker:
        client.messages.create(**ask("[[sim:status=400]]"))
    assert marker.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert marker.value.request_id is not None and marker.value.request_id.startswith("req_")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(**ask("hi", model="gpt-4o"))


def test_missing_key_is_401(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with (anthropic.Anthropic(base_url=url, api_key=None, max_retries=0,
                              default_headers={"Authorization": anthropic.omit},  # type: ignore[dict-item]
                              ) as bare,
          pytest.raises(anthropic.AuthenticationError) as err):
        bare.messages.create(**ask("hi"))
    assert err.value.status_code == 401
    request = urllib.request.Request(url + "/v1/messages", data=json.dumps(ask("hi")).encode())
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request, timeout=10).close()
    with raw.value as response:
        assert response.status == 401 and response.headers["request-id"].startswith("req_")
        assert json.load(response)["error"]["type"] == "authentication_error"


def test_rate_limit_429(url: str, client: anthropic.Anthropic) -> None:
    admin(url, "/_sim/config", {"rpm_limit": 1, "otpm_limit": 50_000})
    ok = client.messages.with_raw_response.create(**ask("one"))
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert ok.headers["anthropic-ratelimit-output-tokens-remaining"] == "49000"  # 50k - 300
    assert ok.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(**ask("two"))
    assert err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    stats = admin(url, "/_sim/stats")
    assert stats["by_status"] == {"200": 1, "429": 1} and stats["successful_calls"] == 1


def test_overloaded_and_server_errors(url: str, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        client.messages.create(**ask("[[sim:status=529]]"))
    assert isinstance(overloaded.value, anthropic.InternalServerError)
    assert overloaded.value.status_code == 529
    assert overloaded.value.response.headers["x-should-retry"] == "true"
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(**ask("[[sim:status=500]]"))
    assert not isinstance(failed.value, anthropic.OverloadedError)
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    admin(url, "/_sim/config", {"fault_529_rate": 1.0})
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(**ask("hi"))
    admin(url, "/_sim/config", {"fault_529_rate": 0.0, "overload_until": time.time() + 60})
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(**ask("hi"))
    admin(url, "/_sim/config", {"overload_until": None})
    assert client.messages.create(**ask("hi")).stop_reason == "end_turn"


def test_spend_limit_and_refusal(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(**ask("[[sim:spend_limit]]"))
    assert "enforced_spend_limit_reached" in err.value.message
    refused = client.messages.create(**ask("[[sim:refusal]] do something bad"))
    assert refused.stop_reason == "refusal"
    assert refused.stop_details is not None and refused.stop_details.type == "refusal"


def test_sdk_retries_a_529_then_succeeds(url: str) -> None:
    admin(url, "/_sim/config", {"fault_529_rate": 0.5, "seed": 3})
    with anthropic.Anthropic(base_url=url, api_key="test-key", max_retries=8) as retrying:
        retrying._calculate_retry_timeout = lambda *a, **k: 0.01  # type: ignore[method-assign]
        for _ in range(5):
            assert retrying.messages.create(**ask("hi")).stop_reason == "end_turn"
    stats = admin(url, "/_sim/stats")
    assert stats["successful_calls"] == 5 and stats["by_status"].get("529", 0) >= 1


def test_latency(url: str, client: anthropic.Anthropic) -> None:
    """The latency is served: a call takes at least its latency (a floor, not a timing
    bound), and one whose latency outlasts the client's timeout times out, while an error
    answer comes at once (it beats the same timeout)."""
    started = time.monotonic()
    client.messages.create(**ask("[[sim:latency=0.3]]"))
    assert time.monotonic() - started >= 0.3
    admin(url, "/_sim/config", {"fixed_latency_s": 0.2})
    started = time.monotonic()
    client.messages.create(**ask("hi"))
    assert time.monotonic() - started >= 0.2
    admin(url, "/_sim/config", {"fixed_latency_s": 3.0})
    impatient = client.with_options(timeout=1.0)
    with pytest.raises(anthropic.APITimeoutError):
        impatient.messages.create(**ask("hi"))
    with pytest.raises(anthropic.BadRequestError):
        impatient.messages.create(**ask("[[sim:status=400]]"))
    # the abandoned call still runs out its latency on the server: leave nothing in flight
    deadline = time.monotonic() + 30
    while admin(url, "/_sim/stats")["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert admin(url, "/_sim/stats")["in_flight"] == 0


def test_stats_and_reset(url: str, client: anthropic.Anthropic) -> None:
    for _ in range(3):
        client.messages.create(**ask("hi"))
    client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(**ask("[[sim:status=400]]"))
    stats = admin(url, "/_sim/stats")
    assert stats["requests_total"] == 5 and stats["messages_requests"] == 4
    assert stats["count_tokens_requests"] == 1 and stats["successful_calls"] == 3
    assert stats["by_status"] == {"200": 4, "400": 1} and stats["by_model"] == {MODEL: 4}
    assert stats["successful_by_model"] == {MODEL: 3} and stats["in_flight"] == 0
    assert stats["rate_limited_by_model"] == {} and stats["overloaded_by_model"] == {}
    cleared = admin(url, "/_sim/reset", {})
    assert cleared["requests_total"] == 0 and cleared["by_status"] == {}


def test_config_rejects_unknown_fields(url: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        admin(url, "/_sim/config", {"port": 1})
    with err.value as response:
        assert response.status == 400
    assert admin(url, "/_sim/config")["rpm_limit"] is None


def test_run_serves_until_sigterm() -> None:
    code = ("from farm.sim.server import SimConfig, run; "
            "run(SimConfig(port=0, ttft_s=0, output_tokens_per_s=1e6))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                          env=env) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("farm simulator listening on http://127.0.0.1:")
        assert line.rstrip().endswith("(SIMULATED Claude API)")
        base = line.split()[4]
        with anthropic.Anthropic(base_url=base, api_key="k", max_retries=0) as c:
            assert c.messages.create(**ask("hi")).stop_reason == "end_turn"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_limits_per_model(url: str, client: anthropic.Anthropic) -> None:
    admin(url, "/_sim/config", {"rpm_limit": 100, "otpm_limit": 50_000,
                                "model_limits": {MODEL: {"rpm": 1}}})
    ok = client.messages.with_raw_response.create(**ask("one"))
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert ok.headers["anthropic-ratelimit-output-tokens-limit"] == "50000"  # the global one
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(**ask("two"))
    headers = err.value.response.headers
    assert int(headers["retry-after"]) >= 1 and "requests" in err.value.message
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-limit"] == "1"
    for _ in range(3):  # another model keeps the global limits
        other = client.messages.with_raw_response.create(**ask("hi", model=SONNET))
        assert other.headers["anthropic-ratelimit-requests-limit"] == "100"
    stats = admin(url, "/_sim/stats")
    assert stats["rate_limited_by_model"] == {MODEL: 1}
    assert stats["successful_by_model"] == {MODEL: 1, SONNET: 3}
    # a change at runtime restarts the buckets
    admin(url, "/_sim/config", {"model_limits": {MODEL: {"rpm": 2, "itpm": 5000}}})
    again = client.messages.with_raw_response.create(**ask("three"))
    assert again.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert again.headers["anthropic-ratelimit-input-tokens-limit"] == "5000"


def test_every_429_carries_retry_after_and_the_limits(url: str,
                                                      client: anthropic.Anthropic) -> None:
    admin(url, "/_sim/config", {"model_limits": {MODEL: {"rpm": 5, "otpm": 9000}}})
    for marker in ("[[sim:status=429]]", "[[sim:spend_limit]]"):
        with pytest.raises(anthropic.RateLimitError) as err:
            client.messages.create(**ask(marker))
        headers = err.value.response.headers
        assert int(headers["retry-after"]) >= 1
        assert headers["anthropic-ratelimit-requests-limit"] == "5"
        assert headers["anthropic-ratelimit-requests-remaining"] == "5"  # nothing was charged
        assert headers["anthropic-ratelimit-output-tokens-remaining"] == "9000"
        assert headers["anthropic-ratelimit-tokens-reset"].endswith("Z")
    assert admin(url, "/_sim/stats")["rate_limited_by_model"] == {MODEL: 2}


def test_storm_on_one_model(url: str, client: anthropic.Anthropic) -> None:
    admin(url, "/_sim/config", {"overload_models": {MODEL: time.time() + 60}})
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError) as err:
            client.messages.create(**ask("hi"))
        assert err.value.response.headers["x-should-retry"] == "true"
    assert client.messages.create(**ask("hi", model=SONNET)).stop_reason == "end_turn"
    admin(url, "/_sim/config", {"overload_models": {MODEL: time.time() - 1}})  # it is over
    assert client.messages.create(**ask("hi")).stop_reason == "end_turn"
    admin(url, "/_sim/config", {"overload_models": {}, "overload_until": time.time() + 60})
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(**ask("hi", model=SONNET))
    stats = admin(url, "/_sim/stats")
    assert stats["overloaded_by_model"] == {MODEL: 2, SONNET: 1}
    assert stats["by_status"] == {"200": 2, "529": 3} and stats["rate_limited_by_model"] == {}
    assert admin(url, "/_sim/reset", {})["overloaded_by_model"] == {}


@pytest.mark.parametrize(("patch", "named"), [
    ({"model_limits": {MODEL: {"rpm": 5, "tpm": 10}}}, "unknown limit tpm"),
    ({"model_limits": {MODEL: {"itpm": 0}}}, "itpm must be a positive integer"),
    ({"model_limits": {MODEL: {"otpm": -1}}}, "otpm must be a positive integer"),
    ({"model_limits": {MODEL: 50}}, "must be an object"),
    ({"overload_models": {MODEL: "soon"}}, "overload_models"),
    ({"burst_s": 0}, "burst_s\n  Input should be greater than 0"),
    ({"burst_s": 61}, "burst_s\n  Input should be less than or equal to 60"),
])
def test_config_rejects_bad_model_settings(url: str, patch: dict[str, Any], named: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        admin(url, "/_sim/config", patch)
    with err.value as response:
        assert response.status == 400 and named in json.load(response)["error"]
    config = admin(url, "/_sim/config")
    assert config["model_limits"] == {} and config["overload_models"] == {}
    assert config["burst_s"] is None


def test_burst_window_set_at_runtime(url: str, client: anthropic.Anthropic) -> None:
    admin(url, "/_sim/config", {"model_limits": {MODEL: {"rpm": 12}}})
    for _ in range(3):  # a full minute's bucket: 12 at once
        client.messages.create(**ask("hi"))
    assert admin(url, "/_sim/config", {"burst_s": 10})["burst_s"] == 10  # restarts the buckets
    ok = client.messages.with_raw_response.create(**ask("one"))
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "12"  # still per minute
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "1"  # of 10 s: 2
    client.messages.create(**ask("two"))
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(**ask("three"))
    assert "rate limit of 12 requests per minute" in err.value.message
    assert int(err.value.response.headers["retry-after"]) in (4, 5)  # one refills in 5 s
