"""The simulator's Message Batches rules (farm.sim.batch_wire), its bill (farm.sim.billing)
and the one request's result (farm.sim.batches.result_of): pure, no server."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

from farm.cli.main import main
from farm.costs.pricing import cost, default_pricebook
from farm.jobs import Usage
from farm.sim import batch_wire as bw
from farm.sim import server
from farm.sim.batches import result_of
from farm.sim.billing import bill, usage_of, usd
from farm.sim.state import SimConfig, SimState


def req(custom_id: Any = "a", **params: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "params": {
        "model": "claude-haiku-4-5", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}], **params}}


@pytest.mark.parametrize(("body", "problem"), [
    ([], "Request body must be a JSON object"),
    ({}, "requests: Field required"),
    ({"requests": {}}, "requests: Input should be a valid list"),
    ({"requests": []}, "requests: List should have at least 1 item after validation, not 0"),
    ({"requests": ["x"]}, "requests.0: Input should be a valid dictionary"),
    ({"requests": [{"params": {}}]}, "requests.0.custom_id: Field required"),
    ({"requests": [{"custom_id": "a"}]}, "requests.0.params: Field required"),
    ({"requests": [req("has space")]}, "requests.0.custom_id: String should match pattern"),
    ({"requests": [req("")]}, "requests.0.custom_id: String should match pattern"),
    ({"requests": [req("x" * 65)]}, "requests.0.custom_id: String should match pattern"),
    ({"requests": [req(7)]}, "requests.0.custom_id: String should match pattern"),
    ({"requests": [req("a"), req("b"), req("a")]},
     "requests.2.custom_id: duplicate custom_id 'a' (also requests.0)"),
    ({"requests": [{"custom_id": "a", "params": []}]},
     "requests.0.params: Input should be a valid dictionary"),
    ({"requests": [req("a"), req("b", stream=True)]},
     "requests.1.params.stream: streaming is not supported in a message batch"),
])
def test_a_bad_create_body_is_refused_naming_the_problem(body: Any, problem: str) -> None:
    found = bw.validate_batch(body)
    assert found is not None and found.startswith(problem), found


def test_a_good_create_body_passes() -> None:
    assert bw.validate_batch({"requests": [req("A-z_09"), req("x" * 64, stream=False)]}) is None
    # the params themselves are checked while the batch is processed, like the real API
    assert bw.validate_batch({"requests": [{"custom_id": "a", "params": {}}]}) is None


def test_the_request_count_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bw, "MAX_REQUESTS", 3)
    assert bw.validate_batch({"requests": [req(c) for c in "abc"]}) is None
    assert bw.validate_batch({"requests": [req(c) for c in "abcd"]}) == (
        "requests: List should have at most 3 items after validation, not 4")


def test_the_batch_object_before_and_after_it_ends() -> None:
    batch = bw.Batch("msgbatch_01x", ["a", "b"], [{}, {}], created_at=0.0, processing_s=2.0)
    seen = bw.batch_object(batch, "http://h:1")
    assert seen == {
        "id": "msgbatch_01x", "type": "message_batch", "processing_status": "in_progress",
        "request_counts": {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0,
                           "expired": 0},
        "ended_at": None, "created_at": "1970-01-01T00:00:00Z",
        "expires_at": "1970-01-02T00:00:00Z", "cancel_initiated_at": None,
        "archived_at": None, "results_url": None}
    batch.cancel_initiated_at = 1.5
    batch.results = [{"type": "succeeded", "message": {}}]  # processed, still reported as such
    assert bw.batch_object(batch, "http://h:1")["processing_status"] == "canceling"
    assert batch.request_counts()["processing"] == 2
    batch.results.append({"type": "canceled"})
    batch.ended_at = 1.75
    seen = bw.batch_object(batch, "http://h:1")
    assert seen["processing_status"] == "ended"
    assert seen["ended_at"] == "1970-01-01T00:00:01.750000Z"
    assert seen["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 0,
                                      "canceled": 1, "expired": 0}
    assert seen["results_url"] == "http://h:1/v1/messages/batches/msgbatch_01x/results"
    assert seen["cancel_initiated_at"] == "1970-01-01T00:00:01.500000Z"


def test_batch_ids() -> None:
    ids = {bw.new_batch_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("msgbatch_01") and len(i) == 33 and i[9:].isalnum() for i in ids)


IDS = ["e", "d", "c", "b", "a"]  # newest first


@pytest.mark.parametrize(("limit", "after", "before", "expected"), [
    (2, None, None, (["e", "d"], True)),
    (5, None, None, (IDS, False)),
    (9, None, None, (IDS, False)),
    (2, "d", None, (["c", "b"], True)),
    (2, "c", None, (["b", "a"], False)),
    (2, "a", None, ([], False)),
    (2, None, "b", (["d", "c"], True)),
    (2, None, "c", (["e", "d"], False)),
    (2, None, "e", ([], False)),
])
def test_pages(limit: int, after: str | None, before: str | None,
               expected: tuple[list[str], bool]) -> None:
    assert bw.page(IDS, limit, after, before) == expected


def test_an_unknown_cursor_is_named() -> None:
    with pytest.raises(ValueError, match="after_id: no message batch msgbatch_zz"):
        bw.page(IDS, 2, after_id="msgbatch_zz")
    with pytest.raises(ValueError, match="before_id: no message batch q"):
        bw.page(IDS, 2, before_id="q")


@pytest.mark.parametrize(("query", "expected"), [
    ({}, (20, None, None)), ({"limit": "1000", "after_id": "x"}, (1000, "x", None)),
    ({"limit": "1", "before_id": "y"}, (1, None, "y")),
])
def test_list_query(query: dict[str, str], expected: tuple[int, str | None, str | None]) -> None:
    assert bw.list_query(query) == expected


@pytest.mark.parametrize(("query", "problem"), [
    ({"limit": "0"}, "limit: Input should be greater than or equal to 1"),
    ({"limit": "1001"}, "limit: Input should be less than or equal to 1000"),
    ({"limit": "ten"}, "limit: Input should be a valid integer"),
    ({"after_id": "a", "before_id": "b"}, "after_id, before_id: give at most one"),
])
def test_a_bad_list_query_is_named(query: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        bw.list_query(query)


def test_requests_fall_due_evenly_over_the_processing_time() -> None:
    assert [bw.due_count(4, 100.0, 2.0, t) for t in (99.0, 100.0, 100.49, 100.5, 101.0,
                                                      101.99, 102.0, 500.0)] == [
        0, 0, 0, 1, 2, 3, 4, 4]
    assert bw.due_count(3, 0.0, 0.0, 0.0) == 3  # no processing time: all at once
    assert [bw.next_due(4, 100.0, 2.0, done) for done in range(4)] == [
        100.5, 101.0, 101.5, 102.0]
    for done in range(7):  # waking at a request's due time finds it due (no float shortfall)
        assert bw.due_count(7, 1.7e9, 0.3, bw.next_due(7, 1.7e9, 0.3, done)) == done + 1


def test_the_result_order_is_a_shuffle_fixed_by_seed_and_ids() -> None:
    ids = [f"r{i}" for i in range(30)]
    order = bw.result_order(0, ids)
    assert sorted(order) == list(range(30)) and order != list(range(30))
    assert bw.result_order(0, list(ids)) == order
    assert bw.result_order(1, ids) != order


def test_the_bill_of_one_message() -> None:
    usage = {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 3000,
             "cache_read_input_tokens": 5000, "service_tier": "standard", "cache_creation": {
                 "ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000}}
    assert usage_of(usage) == Usage(
        input_tokens=1000, output_tokens=200, cache_creation_input_tokens=3000,
        cache_read_input_tokens=5000, cache_creation_5m_input_tokens=1000,
        cache_creation_1h_input_tokens=2000)
    # haiku-4-5 per MTok: in 1, out 5, 5m write 1.25, 1h write 2, read 0.1
    listed = Decimal("0.001") + Decimal("0.001") + Decimal("0.00125") + Decimal("0.004") + \
        Decimal("0.0005")
    assert bill("claude-haiku-4-5", usage) == listed
    assert bill("claude-haiku-4-5", usage, batch=True) == listed / 2
    assert bill("claude-haiku-4-5-20251001", usage) == listed  # a snapshot: its base's price
    assert bill("claude-unpriced-9", usage) is None
    assert usd(Decimal("0E-10")) == "0.0000000000" and usd(Decimal(0)) == "0"


def test_the_state_adds_up_the_bill_and_reset_clears_it() -> None:
    state = SimState(SimConfig())
    usage = {"input_tokens": 10, "output_tokens": 20, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0}
    state.charge("claude-sonnet-4-5", usage)
    state.charge("claude-unpriced-9", usage)  # no price: nothing billed
    one = cost(default_pricebook()["claude-sonnet-4-5"], usage_of(usage))
    state.count_batch(Counter(succeeded=2, expired=1), Decimal("0.25"))
    stats = state.stats()
    assert Decimal(stats["billed_usd"]) == one + Decimal("0.25")
    assert stats["billed_batch_usd"] == "0.25"
    assert stats["batches"] == {"created": 0, "requests": 0, "succeeded": 2, "errored": 0,
                                "expired": 1, "canceled": 0}
    state.reset()
    assert state.stats()["billed_usd"] == "0" and state.billed_batch == 0


def params(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 100,
            "messages": [{"role": "user", "content": text}], **kw}


@pytest.mark.parametrize(("body", "expected"), [
    (params("[[sim:batch_expire]] hi"), {"type": "expired"}),
    (params("[[sim:status=500]]"), {"type": "errored", "error": {"type": "error", "error": {
        "type": "api_error", "message": "Internal server error"}}}),
    (params("[[sim:status=529]]"), {"type": "errored", "error": {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}}),
    (params("hi", max_tokens=0), {"type": "errored", "error": {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "max_tokens: Input should be greater than or equal to 1"}}}),
    (params("hi", model="gpt-4o"), {"type": "errored", "error": {"type": "error", "error": {
        "type": "not_found_error", "message": "model: gpt-4o"}}}),
    ("not an object", {"type": "errored", "error": {"type": "error", "error": {
        "type": "invalid_request_error", "message": "Request body must be a JSON object"}}}),
])
def test_a_request_that_does_not_succeed(body: Any, expected: dict[str, Any]) -> None:
    state = SimState(SimConfig())
    assert result_of(state, body, 0.0) == expected
    assert state.cache == {}


def test_a_spend_limit_marker_errors_with_the_rate_limit_error() -> None:
    found = result_of(SimState(SimConfig()), params("[[sim:spend_limit]]"), 0.0)
    assert found["error"]["error"]["type"] == "rate_limit_error"
    assert "enforced_spend_limit_reached" in found["error"]["error"]["message"]


def test_a_succeeded_request_uses_the_shared_prompt_cache() -> None:
    state = SimState(SimConfig())
    system = [{"type": "text", "text": "x" * 6000, "cache_control": {"type": "ephemeral",
                                                                      "ttl": "1h"}}]
    first = result_of(state, params("q1", system=system), 0.0)
    again = result_of(state, params("q1", system=system), 1.0)
    assert first["type"] == again["type"] == "succeeded"
    assert first["message"]["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] == 1500
    assert again["message"]["usage"]["cache_read_input_tokens"] == 1500
    assert first["message"]["content"] == again["message"]["content"]  # deterministic


def test_farm_sim_takes_batch_processing_s(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[SimConfig] = []
    monkeypatch.setattr(server, "run", served.append)
    result = CliRunner().invoke(main, ["sim", "--port", "9", "--batch-processing-s", "0.25"])
    assert result.exit_code == 0, result.output
    assert served[0].batch_processing_s == 0.25
    assert CliRunner().invoke(main, ["sim", "--port", "9"]).exit_code == 0
    assert served[1].batch_processing_s == 2.0
    refused = CliRunner().invoke(main, ["sim", "--port", "9", "--batch-processing-s", "-1"])
    assert refused.exit_code == 2 and "--batch-processing-s" in refused.output
    with pytest.raises(ValueError, match="batch_processing_s"):
        SimConfig(batch_processing_s=-0.5)
