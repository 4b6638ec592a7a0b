"""Routing (farm.routing): what decides before the learned model (hints, tools), route()
overrides and the second-opinion band, and the Celery router route_task (queue choice and
prompt redaction)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from typing import Any

import pytest

from farm.broker.layout import INTAKE_QUEUE
from farm.jobs import MAX_PROMPT_CHARS, Complexity, JobRequest, Route
from farm.routing.classify import Decision, classify, decide
from farm.routing.route import (
    UnknownModelError,
    UnknownQueueError,
    queue_for_model,
    queue_named,
    route,
)
from farm.routing.router import redact_kwargs, route_task
from farm.settings import DEFAULT_QUEUES, QueueSpec

SIMPLE_Q, COMPLEX_Q = "haiku-simple", "sonnet-complex"
HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-5-5"
JOB_ID = "0b0e3c9e-4a53-4f53-9a0e-1b2f3c4d5e6f"
SECRET = "The launch code for Project Nightingale is 7741-ALPHA; summarize the memo."
SECRET_SYSTEM = "You are the private assistant of the CFO of Example Corp."
BUGGY = ("This worker deadlocks under load about once a day:\n```python\nimport threading\n"
         "lock_a, lock_b = threading.Lock(), threading.Lock()\ndef transfer(a, b):\n"
         "    with lock_a:\n        with lock_b:\n            a.balance -= 1; b.balance += 1\n"
         "```\nFind the cause and fix it.")
TRIVIAL = "What is the capital of France?"


def req(prompt: str = TRIVIAL, **fields: Any) -> JobRequest:
    return JobRequest(prompt=prompt, **fields)


def tool(name: str) -> dict[str, Any]:
    return {"name": name, "input_schema": {"type": "object"}}


# --- the classifier (the learned model itself: tests/unit/test_classifier.py) --------------


def test_classifier_reason_names_the_score_and_signals() -> None:
    complexity, reason = classify(req(BUGGY))
    assert complexity is Complexity.COMPLEX
    assert re.fullmatch(r"score 0\.\d\d >= 0\.\d\d: .+", reason), reason
    complexity, reason = classify(req("Translate 'good night' into Italian."))
    assert complexity is Complexity.SIMPLE
    assert re.fullmatch(r"score 0\.\d\d < 0\.\d\d: .+", reason), reason


def test_a_job_with_tools_is_complex() -> None:
    agent = req("Find and book a table for four tonight.", tools=(tool("search"), tool("book")))
    assert decide(agent) == Decision(Complexity.COMPLEX, "2 tools (an agent job)")
    assert decide(req(TRIVIAL, tools=(tool("search"),))).reason == "1 tool (an agent job)"


def test_metadata_hint_decides_outright() -> None:
    assert classify(req(BUGGY, metadata={"complexity": "simple"})) == (
        Complexity.SIMPLE, "metadata hint simple"
    )
    assert classify(req(TRIVIAL, metadata={"complexity": " Complex "}))[0] is Complexity.COMPLEX
    assert classify(req(TRIVIAL, metadata={"complexity": "weird"}))[0] is Complexity.SIMPLE
    assert decide(req(TRIVIAL, metadata={"complexity": "simple"})).score is None


def test_classify_handles_hostile_max_size_input() -> None:
    half = MAX_PROMPT_CHARS // 2
    for text in ("?" * MAX_PROMPT_CHARS, "a " * half, "x\n" * half):
        got = decide(req(text))
        assert got.complexity in (Complexity.SIMPLE, Complexity.COMPLEX)
        assert got.score is not None and 0 <= got.score <= 1


# --- route() ------------------------------------------------------------------------------


def test_route_classifies_auto_jobs() -> None:
    simple = route(req(TRIVIAL), DEFAULT_QUEUES)
    assert (simple.queue, simple.model, simple.complexity) == (SIMPLE_Q, HAIKU, Complexity.SIMPLE)
    hard = route(req(BUGGY), DEFAULT_QUEUES)
    assert isinstance(hard, Route)
    assert (hard.queue, hard.model, hard.complexity) == (COMPLEX_Q, SONNET, Complexity.COMPLEX)
    assert hard.reason == classify(req(BUGGY))[1]


def test_the_uncertain_band_sends_a_job_to_the_simple_queue_for_a_second_opinion() -> None:
    got = decide(req(BUGGY))
    assert got.score is not None
    inside = route(req(BUGGY), DEFAULT_QUEUES, (got.score - 0.01, got.score + 0.01))
    assert (inside.queue, inside.complexity, inside.second_opinion) == (
        SIMPLE_Q, Complexity.SIMPLE, True)
    assert inside.score == got.score and inside.reason.endswith("second opinion")
    outside = route(req(BUGGY), DEFAULT_QUEUES, (0.0, got.score - 0.01))
    assert (outside.queue, outside.second_opinion) == (COMPLEX_Q, False)
    # a hint, tools or an explicit choice has no score: never a second opinion
    for job in (req(BUGGY, metadata={"complexity": "complex"}), req(BUGGY, tools=(tool("t"),)),
                req(BUGGY, complexity=Complexity.COMPLEX), req(BUGGY, model=SONNET)):
        assert not route(job, DEFAULT_QUEUES, (0.0, 1.0)).second_opinion


def test_explicit_model_picks_its_queue() -> None:
    chosen = route(req(TRIVIAL, model=SONNET), DEFAULT_QUEUES)
    assert chosen == Route(queue=COMPLEX_Q, model=SONNET, complexity=Complexity.COMPLEX,
                           reason="explicit model")
    assert route(req(BUGGY, model=HAIKU), DEFAULT_QUEUES).queue == SIMPLE_Q


def test_explicit_model_prefers_the_queue_of_an_explicit_complexity() -> None:
    queues = (QueueSpec(name="s-fast", model="m", complexity="simple"),
              QueueSpec(name="s-deep", model="m", complexity="complex"))
    assert route(req(model="m"), queues).queue == "s-fast"
    deep = route(req(model="m", complexity=Complexity.COMPLEX), queues)
    assert (deep.queue, deep.complexity) == ("s-deep", Complexity.COMPLEX)
    assert queue_for_model("m", queues, prefer="complex").name == "s-deep"


def test_unknown_model_raises_naming_the_model_and_the_known_ones() -> None:
    with pytest.raises(UnknownModelError) as caught:
        route(req(model="gpt-9"), DEFAULT_QUEUES)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.startswith("model:")  # farm.client reports it under the field "model"
    assert "'gpt-9'" in message and HAIKU in message and SONNET in message
    assert caught.value.known == (HAIKU, SONNET)


def test_unknown_model_raises_even_with_an_explicit_queue() -> None:
    with pytest.raises(UnknownModelError):
        route(req(model="gpt-9", queue=SIMPLE_Q), DEFAULT_QUEUES)


def test_explicit_queue_and_model_together() -> None:
    chosen = route(req(model=SONNET, queue=SIMPLE_Q), DEFAULT_QUEUES)
    assert (chosen.queue, chosen.model, chosen.reason) == (SIMPLE_Q, SONNET,
                                                           "explicit model and queue")


def test_explicit_queue() -> None:
    chosen = route(req(BUGGY, queue=SIMPLE_Q), DEFAULT_QUEUES)
    assert chosen == Route(queue=SIMPLE_Q, model=HAIKU, complexity=Complexity.SIMPLE,
                           reason="explicit queue")
    with pytest.raises(UnknownQueueError, match=r"^queue: unknown queue 'nope'; known: "):
        route(req(queue="nope"), DEFAULT_QUEUES)
    assert queue_named(COMPLEX_Q, DEFAULT_QUEUES).model == SONNET


def test_explicit_complexity_beats_the_classifier() -> None:
    hard = route(req(TRIVIAL, complexity=Complexity.COMPLEX), DEFAULT_QUEUES)
    assert (hard.queue, hard.complexity, hard.reason) == (COMPLEX_Q, Complexity.COMPLEX,
                                                          "explicit complexity")
    easy = route(req(BUGGY, complexity=Complexity.SIMPLE), DEFAULT_QUEUES)
    assert (easy.queue, easy.model, easy.complexity) == (SIMPLE_Q, HAIKU, Complexity.SIMPLE)


def test_model_beats_complexity() -> None:
    chosen = route(req(model=HAIKU, complexity=Complexity.COMPLEX), DEFAULT_QUEUES)
    assert (chosen.queue, chosen.model, chosen.reason) == (SIMPLE_Q, HAIKU, "explicit model")


def test_route_uses_the_configured_queues_not_the_defaults() -> None:
    queues = (QueueSpec(name="small", model="m-small", complexity="simple"),
              QueueSpec(name="big", model="m-big", complexity="complex"))
    assert route(req(TRIVIAL), queues).queue == "small"
    assert route(req(BUGGY), queues).model == "m-big"


def test_no_queue_for_the_complexity_raises() -> None:
    only_simple = (DEFAULT_QUEUES[0],)
    with pytest.raises(UnknownQueueError, match="complexity 'complex'"):
        route(req(BUGGY), only_simple)
    with pytest.raises(UnknownQueueError):
        route(req(complexity=Complexity.COMPLEX), ())


def test_free_form_queue_complexity_is_recorded_as_auto() -> None:
    queues = (QueueSpec(name="batch", model="m", complexity="batch"),)
    assert route(req(queue="batch"), queues).complexity is Complexity.AUTO


# --- route_task (the Celery router) -------------------------------------------------------


def inline(**fields: Any) -> dict[str, Any]:
    return {"prompt": SECRET, "system": SECRET_SYSTEM, **fields}


def test_route_task_ignores_other_tasks() -> None:
    assert route_task("other.task", (), {"request": inline()}, {}) is None
    assert route_task("farm.run_job2", (), {}, {}) is None


def test_route_task_queue_kwarg() -> None:
    out = route_task("farm.run_job", (), {"job_id": JOB_ID, "queue": "custom-q"}, {})
    assert out is not None and out["queue"] == "custom-q"
    assert out["argsrepr"] == "()"


def test_route_task_classifies_an_inline_request_with_default_queues() -> None:
    simple = route_task("farm.run_job", (), {"job_id": JOB_ID, "request": inline()}, {})
    assert simple is not None and simple["queue"] == SIMPLE_Q
    hard = route_task("farm.run_job", (), {"request": {"prompt": BUGGY, "max_tokens": 4000}}, {})
    assert hard is not None and hard["queue"] == COMPLEX_Q
    explicit = route_task("farm.run_job", (), {"request": inline(model=SONNET)}, {})
    assert explicit is not None and explicit["queue"] == COMPLEX_Q
    as_model = route_task("farm.run_job", (), {"request": JobRequest(prompt=BUGGY)}, {})
    assert as_model is not None and as_model["queue"] == COMPLEX_Q


@pytest.mark.parametrize(
    "request_value",
    [
        {"system": "no prompt"},
        {"prompt": "   "},
        {"prompt": "hi", "max_tokens": 0},
        {"prompt": "hi", "colour": "blue"},
        {"prompt": "hi", "model": "gpt-9"},  # valid, but no default queue serves it
        {"prompt": "x" * MAX_PROMPT_CHARS, "max_tokens": 64_000},  # too big for the context
        "just a string",
        None,
        ["prompt", "hi"],
    ],
)
def test_route_task_sends_invalid_inline_requests_to_intake(request_value: Any) -> None:
    out = route_task("farm.run_job", (), {"job_id": JOB_ID, "request": request_value}, {})
    assert out is not None and out["queue"] == INTAKE_QUEUE == "farm-intake"
    assert "kwargsrepr" in out and "argsrepr" in out


def test_route_task_sends_unexpected_kwargs_to_intake() -> None:
    out = route_task("farm.run_job", (), {"request": inline(), "priority": "high"}, {})
    assert out is not None and out["queue"] == INTAKE_QUEUE


def test_route_task_respects_an_explicit_queue_option_but_still_redacts() -> None:
    kwargs = {"job_id": JOB_ID, "request": inline(), "queue": "other"}
    out = route_task("farm.run_job", (), kwargs, {"queue": COMPLEX_Q, "priority": 3})
    assert out is not None and "queue" not in out
    assert set(out) == {"argsrepr", "kwargsrepr"}
    assert SECRET not in out["kwargsrepr"]


def test_route_task_job_id_only_leaves_the_default_queue() -> None:
    out = route_task("farm.run_job", (), {"job_id": JOB_ID}, {})
    assert out == {"argsrepr": "()", "kwargsrepr": f"{{'job_id': '{JOB_ID}'}}"}
    assert route_task("farm.run_job", None, None, None) == {"argsrepr": "()", "kwargsrepr": "{}"}


def test_route_task_accepts_celery_extra_arguments() -> None:
    out = route_task("farm.run_job", (), {"job_id": JOB_ID}, {}, task=object(), extra=1)
    assert out is not None


def test_redaction_never_shows_prompt_or_system_text() -> None:
    request = inline(metadata={"note": "meta"})
    for options in ({}, {"queue": SIMPLE_Q}):
        out = route_task("farm.run_job", (), {"job_id": JOB_ID, "request": request}, options)
        assert out is not None
        dumped = repr(out)
        for fragment in (SECRET, SECRET_SYSTEM, "Nightingale", "7741", "CFO", "meta"):
            assert fragment not in dumped
        assert out["kwargsrepr"] == (
            f"{{'job_id': '{JOB_ID}', 'request': "
            f"'<redacted {len(SECRET) + len(SECRET_SYSTEM)} chars>'}}"
        )


def test_redaction_of_odd_shapes() -> None:
    # a prompt smuggled into job_id, positional args, odd keys: nothing is shown verbatim
    out = route_task("farm.run_job", (SECRET,), {"job_id": SECRET, SECRET: 1}, {})
    assert out is not None
    assert SECRET not in repr(out) and "Nightingale" not in repr(out)
    assert out["argsrepr"] == "(<redacted 1 positional args>)"
    assert redact_kwargs({"job_id": str(uuid.UUID(JOB_ID)), "queue": "haiku-simple"}) == (
        f"{{'job_id': '{JOB_ID}', 'queue': 'haiku-simple'}}"
    )
    assert redact_kwargs({"request": JobRequest(prompt=SECRET)}) == (
        f"{{'request': '<redacted {len(SECRET)} chars>'}}"
    )
    assert redact_kwargs({"request": 42}) == "{'request': '<redacted int>'}"
    many = redact_kwargs({f"k{i}": "v" for i in range(40)})
    assert many.count("<redacted") == 16


def test_celery_uses_the_router_by_name_with_redacted_reprs() -> None:
    """The real celeryconfig with an in-memory broker: routing key and reprs as published."""
    from celery import Celery
    from celery.signals import before_task_publish

    import celeryconfig

    app = Celery("routing-test", set_as_current=False)
    app.config_from_object(celeryconfig)
    app.conf.broker_url = "memory://"
    published: list[tuple[str, str, str]] = []

    def capture(sender: Any = None, headers: Any = None, routing_key: Any = None, **_: Any) -> None:
        published.append((routing_key, headers["argsrepr"], headers["kwargsrepr"]))

    before_task_publish.connect(capture, weak=False)
    try:
        app.send_task("farm.run_job", kwargs={"job_id": JOB_ID, "request": inline()})
        app.send_task("farm.run_job", kwargs={"job_id": JOB_ID, "request": {"prompt": BUGGY}})
        app.send_task("farm.run_job", kwargs={"job_id": JOB_ID, "request": {"prompt": ""}})
        app.send_task("farm.run_job", kwargs={"job_id": JOB_ID}, queue=COMPLEX_Q)
    finally:
        before_task_publish.disconnect(capture)
        app.close()
    assert [p[0] for p in published] == [SIMPLE_Q, COMPLEX_Q, INTAKE_QUEUE, COMPLEX_Q]
    assert all(p[1] == "()" for p in published)
    assert all(SECRET not in p[2] and "deadlocks" not in p[2] for p in published)


def test_importing_routing_pulls_in_neither_celery_nor_settings_loading() -> None:
    code = (
        "import sys, farm.routing.classify, farm.routing.route\n"
        "bad = [m for m in ('celery', 'farm.app', 'farm.worker.tasks', 'farm.store.schema') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
