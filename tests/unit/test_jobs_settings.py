from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from farm.client import InvalidJobError, validate
from farm.jobs import CONTEXT_WINDOW_TOKENS, JobRequest, JobStatus, Priority
from farm.settings import Settings, normalize_database_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u:p@h:5/db", "postgresql+psycopg://u:p@h:5/db"),
    ],
)
def test_database_url_forms(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


def test_bad_database_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_DATABASE_URL", "mysql://x/y")
    with pytest.raises(ValidationError, match="FARM_DATABASE_URL"):
        Settings()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FARM_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FARM_DATABASE_URL", "postgresql://x@127.0.0.1/db")
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k-123")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    s = Settings()
    assert s.broker_url == "redis://127.0.0.1:1/0"
    assert s.database_url == "postgresql+psycopg://x@127.0.0.1/db"
    assert s.data_dir == tmp_path
    assert s.anthropic_api_key is not None
    assert s.anthropic_api_key.get_secret_value() == "k-123"
    assert "k-123" not in repr(s)
    assert s.anthropic_base_url == "http://127.0.0.1:9"
    assert {q.name: q.model for q in s.queues}["haiku-simple"] == "claude-haiku-4-5"


def test_default_models_have_prices_and_are_not_deprecated() -> None:
    from farm.costs.pricing import default_pricebook

    deprecated = {"claude-sonnet-4-5", "claude-opus-4-5", "claude-mythos-preview"}
    for spec in Settings().queues:
        assert default_pricebook().price(spec.model) is not None
        assert spec.model not in deprecated


def test_job_request_defaults_and_frozen() -> None:
    job = JobRequest(prompt="hi")
    assert job.priority is Priority.NORMAL
    with pytest.raises(ValidationError):
        job.prompt = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
        ({"prompt": "x", "complexity": "medium"}, "complexity"),
        ({"prompt": "x", "priority": "urgent"}, "priority"),
        ({"prompt": "x", "tenant": "has space"}, "tenant"),
        ({"prompt": "x", "colour": "red"}, "colour"),
    ],
)
def test_invalid_jobs_name_the_field(fields: dict[str, object], bad: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        validate([fields], Settings())
    assert any(field == bad for _, field, _ in info.value.problems), info.value.problems
    assert "nothing was enqueued" in str(info.value)


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"prompt": "SECRET \x00 in the prompt"}, "prompt"),
        ({"prompt": "x", "system": "SECRET\x00"}, "system"),
        ({"prompt": "x", "model": "claude-haiku-4-5\x00"}, "model"),
        ({"prompt": "x", "queue": "haiku-simple\x00"}, "queue"),
        ({"prompt": "x", "metadata": {"SECRET\x00": "v"}}, "metadata"),
        ({"prompt": "x", "metadata": {"k": "SECRET\x00"}}, "metadata"),
        ({"prompt": "x", "tools": [{"name": "t", "input_schema": {
            "type": "object", "properties": {"a": {"enum": ["SECRET\x00"]}}}}]}, "tools"),
    ],
)
def test_a_nul_anywhere_in_a_job_is_rejected_naming_the_field(fields: dict[str, object],
                                                              bad: str) -> None:
    # Postgres cannot store NUL in text or jsonb: the job is refused before it is recorded
    with pytest.raises(InvalidJobError) as info:
        validate([fields], Settings())
    assert [(field, "NUL" in message) for _, field, message in info.value.problems] == [
        (bad, True)]
    assert "SECRET" not in str(info.value)  # the value is not repeated


def test_unknown_model_and_queue_are_rejected() -> None:
    with pytest.raises(InvalidJobError, match="claude-nonexistent"):
        validate([{"prompt": "x", "model": "claude-nonexistent"}], Settings())
    with pytest.raises(InvalidJobError, match="no-such-queue"):
        validate([{"prompt": "x", "queue": "no-such-queue"}], Settings())


def test_prompt_over_context_window_is_rejected() -> None:
    prompt = "x" * (4 * CONTEXT_WINDOW_TOKENS)
    with pytest.raises(InvalidJobError, match="context window"):
        validate([{"prompt": prompt[: 4 * CONTEXT_WINDOW_TOKENS - 100], "max_tokens": 1000}],
                 Settings())


def test_batch_reports_every_bad_job_by_index() -> None:
    with pytest.raises(InvalidJobError) as info:
        validate([{"prompt": "ok"}, {"prompt": ""}, {"prompt": "ok"}, {"max_tokens": 5}],
                 Settings())
    assert sorted({i for i, _, _ in info.value.problems}) == [1, 3]


def test_terminal_statuses() -> None:
    assert {s for s in JobStatus if s.terminal} == {
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED
    }


def test_parse_message_reads_the_wire_format() -> None:
    import json

    from farm.provider.messages import parse_message

    body = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Hello"}, {"type": "tool_use", "id": "t"},
                    {"type": "text", "text": " world"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6, "cache_creation_input_tokens": 100,
                  "cache_read_input_tokens": 50,
                  "cache_creation": {"ephemeral_5m_input_tokens": 40,
                                     "ephemeral_1h_input_tokens": 60}},
    }
    text, stop, usage, model = parse_message(json.dumps(body).encode())
    assert (text, stop, model) == ("Hello world", "end_turn", "claude-haiku-4-5")
    assert usage.input_tokens == 12 and usage.output_tokens == 6
    assert usage.cache_creation_input_tokens == 100 and usage.cache_read_input_tokens == 50
    assert usage.cache_creation_5m_input_tokens == 40
    assert usage.cache_creation_1h_input_tokens == 60
    del body["usage"]["cache_creation"]  # type: ignore[attr-defined]
    _, _, usage, _ = parse_message(json.dumps(body).encode())
    assert usage.cache_creation_5m_input_tokens is None
    assert usage.cache_creation_1h_input_tokens is None


def test_broker_envelope_check() -> None:
    import json

    from farm.broker.transport import decode_envelope

    good = {"body": "e30=", "properties": {"delivery_tag": "x"}, "headers": {}}
    assert decode_envelope(json.dumps(good).encode()) == good
    for bad in (b"not json", b"[1, 2]", b'{"body": "x"}', b'{"body": "x", "properties": 3}'):
        with pytest.raises(ValueError):
            decode_envelope(bad)
