"""The second opinion's pure parts (farm.routing.second_opinion) and the settings of
escalation and of the uncertain band (farm.settings)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from farm.jobs import Complexity, JobRequest, Priority
from farm.routing.second_opinion import (
    MAX_TOKENS,
    PROMPT_CHARS,
    RUBRIC,
    TAG,
    decide,
    opinion_request,
    parse_opinion,
)
from farm.settings import DEFAULT_QUEUES, QueueSpec, Settings, parse_band


def test_the_rubric_request() -> None:
    job = JobRequest(prompt="Translate 'hi' into French.", system="secret system prompt",
                     max_tokens=2000, priority=Priority.HIGH, tenant="search",
                     max_cost_usd=Decimal("0.5"), tools=({"name": "t"},), self_check=True,
                     json_schema={"type": "object"}, escalate=True, metadata={"k": "v"})
    ask = opinion_request(job)
    assert ask.system == RUBRIC and RUBRIC.startswith(TAG)
    assert ask.max_tokens == MAX_TOKENS == 32
    assert (ask.priority, ask.tenant, ask.max_cost_usd) == (Priority.HIGH, "search",
                                                            Decimal("0.5"))
    assert "Translate 'hi' into French." in ask.prompt and "2,000 output tokens" in ask.prompt
    # nothing else of the job travels: no tools, no system prompt, no format to ask for
    assert "secret system prompt" not in ask.prompt
    assert not ask.tools and not ask.wants_json and not ask.self_check
    assert ask.escalate is None and not ask.metadata
    for words in ("multi-step reasoning", "diagnosing bugs", "trade-offs", "substantial code",
                  "extraction", "classification", "short translation", "rewriting",
                  '{"complexity":"simple"}', '{"complexity":"complex"}'):
        assert words in RUBRIC


def test_a_long_prompt_is_truncated() -> None:
    long = "x" * (PROMPT_CHARS + 1234)
    ask = opinion_request(JobRequest(prompt=long))
    assert "x" * PROMPT_CHARS in ask.prompt and "x" * (PROMPT_CHARS + 1) not in ask.prompt
    assert "1,234 more characters not shown" in ask.prompt
    assert len(ask.prompt) < PROMPT_CHARS + 200
    exact = opinion_request(JobRequest(prompt="y" * PROMPT_CHARS))
    assert "not shown" not in exact.prompt


@pytest.mark.parametrize(("text", "said"), [
    ('{"complexity":"simple"}', Complexity.SIMPLE),
    ('{"complexity": "complex"}', Complexity.COMPLEX),
    ('```json\n{"complexity": "Complex"}\n```', Complexity.COMPLEX),
    ('Sure. {"complexity": " simple "} Done.', Complexity.SIMPLE),
    ("complexity: complex", Complexity.COMPLEX),
    ("'complexity'='simple'", Complexity.SIMPLE),
    ('{"complexity": "medium"} but really simple', Complexity.SIMPLE),
    ("COMPLEX", Complexity.COMPLEX),
    ("It is simple.", Complexity.SIMPLE),
    ('{"complexity": 3}', None),
    ("simple or complex, hard to say", None),
    ("no idea", None),
    ("", None),
    ("{not json", None),
    ("complexity", None),
])
def test_parse_opinion(text: str, said: Complexity | None) -> None:
    assert parse_opinion(text) is said


def test_decide() -> None:
    simple, complex_ = DEFAULT_QUEUES
    moved = decide(Complexity.COMPLEX, DEFAULT_QUEUES)
    assert moved.target == complex_ and moved.note == "; second opinion: complex"
    assert decide(Complexity.SIMPLE, DEFAULT_QUEUES).target is None
    assert decide(Complexity.SIMPLE, DEFAULT_QUEUES).note == "; second opinion: simple"
    assert decide(None, DEFAULT_QUEUES).note == "; second opinion: unclear, kept simple"
    alone = decide(Complexity.COMPLEX, (simple,))
    assert alone.target is None and "no complex queue" in alone.note
    assert decide(Complexity.AUTO, DEFAULT_QUEUES).target is None


# --- settings ---------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "band"), [
    (None, None), ("", None), ("  ", None), ("0.35,0.65", (0.35, 0.65)),
    (" 0 , 1 ", (0.0, 1.0)), ((0.2, 0.4), (0.2, 0.4)), ([0.1, 0.9], (0.1, 0.9)),
])
def test_parse_band(raw: object, band: tuple[float, float] | None) -> None:
    assert parse_band(raw) == band


@pytest.mark.parametrize("raw", ["0.5", "0.6,0.4", "0.5,0.5", "-0.1,0.5", "0.2,1.5",
                                 "a,b", "0.1,0.2,0.3", "nan,0.5", 0.5, (1,)])
def test_bad_bands_are_refused_naming_the_variable(raw: object) -> None:
    with pytest.raises(ValueError, match="FARM_ROUTER_SECOND_OPINION must be empty"):
        parse_band(raw)


def test_band_and_short_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().router_second_opinion is None
    assert Settings().escalate_short_budget == 1024
    monkeypatch.setenv("FARM_ROUTER_SECOND_OPINION", "0.4,0.6")
    monkeypatch.setenv("FARM_ESCALATE_SHORT_BUDGET", "256")
    settings = Settings()
    assert settings.router_second_opinion == (0.4, 0.6)
    assert settings.escalate_short_budget == 256
    monkeypatch.setenv("FARM_ROUTER_SECOND_OPINION", "")
    assert Settings().router_second_opinion is None
    monkeypatch.setenv("FARM_ROUTER_SECOND_OPINION", "0.7,0.2")
    with pytest.raises(ValidationError, match=r"FARM_ROUTER_SECOND_OPINION must be empty .*"
                                              r"got 0.7,0.2"):
        Settings()
    monkeypatch.delenv("FARM_ROUTER_SECOND_OPINION")
    monkeypatch.setenv("FARM_ESCALATE_SHORT_BUDGET", "0")
    with pytest.raises(ValidationError, match="escalate_short_budget"):
        Settings()


def test_a_queue_escalates_only_to_another_configured_queue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    queues = ('[{"name": "fast", "model": "claude-haiku-4-5", "complexity": "simple", '
              '"escalate_to": "deep"}, {"name": "deep", "model": "claude-sonnet-5-5", '
              '"complexity": "complex"}]')
    monkeypatch.setenv("FARM_QUEUES", queues)
    assert Settings().queues[0].escalate_to == "deep"
    monkeypatch.setenv("FARM_QUEUES", queues.replace('"escalate_to": "deep"',
                                                     '"escalate_to": "nowhere"'))
    with pytest.raises(ValidationError, match="queue 'fast' escalates to 'nowhere', which is "
                                              "not configured; configured: fast, deep"):
        Settings()
    monkeypatch.setenv("FARM_QUEUES", queues.replace('"escalate_to": "deep"',
                                                     '"escalate_to": "fast"'))
    with pytest.raises(ValidationError, match="which is itself"):
        Settings()
    assert QueueSpec(name="q", model="m", complexity="simple").escalate_to is None
