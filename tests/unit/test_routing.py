"""Routing (farm.routing): signals, the classifier on a labelled set, route() overrides, and the
Celery router route_task (queue choice and prompt redaction)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from collections import Counter
from typing import Any

import pytest

from farm.broker.layout import INTAKE_QUEUE
from farm.jobs import MAX_PROMPT_CHARS, Complexity, JobRequest, Route
from farm.routing.classify import COMPLEX_THRESHOLD, Signals, classify, signals
from farm.routing.route import (
    UnknownModelError,
    UnknownQueueError,
    queue_for_model,
    queue_named,
    route,
)
from farm.routing.router import redact_kwargs, route_task
from farm.settings import DEFAULT_QUEUES, QueueSpec
from tests.unit.routing_cases import CASES, accuracy, misclassified

SIMPLE_Q, COMPLEX_Q = "haiku-simple", "sonnet-complex"
HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-5-5"
JOB_ID = "0b0e3c9e-4a53-4f53-9a0e-1b2f3c4d5e6f"
SECRET = "The launch code for Project Nightingale is 7741-ALPHA; summarize the memo."
SECRET_SYSTEM = "You are the private assistant of the CFO of Example Corp."
BUGGY = "Debug this please:\n```python\ndef f(xs):\n    return xs[0] / len(xs)\n```\nIt crashes."
TRIVIAL = "What is the capital of France?"


def req(prompt: str = TRIVIAL, **fields: Any) -> JobRequest:
    return JobRequest(prompt=prompt, **fields)


def tool(name: str) -> dict[str, Any]:
    return {"name": name, "input_schema": {"type": "object"}}


# --- the labelled set ---------------------------------------------------------------------


def test_labelled_set_is_large_and_mixed() -> None:
    labels = Counter(case.expected for case in CASES)
    assert len(CASES) >= 60
    assert set(labels) == {"simple", "complex"}
    assert min(labels.values()) >= 25, labels
    assert len({case.prompt for case in CASES}) == len(CASES), "duplicate prompts"


def test_classifier_accuracy_on_labelled_set() -> None:
    confusion: Counter[tuple[str, str]] = Counter()
    for case in CASES:
        confusion[(case.expected, classify(case.request())[0].value)] += 1
    score = accuracy()
    print(f"\nrouting classifier accuracy: {score:.1%} on n={len(CASES)}")
    print("  expected -> predicted: " + ", ".join(f"{e}->{p}: {n}" for (e, p), n in
                                                   sorted(confusion.items())))
    for case, predicted, reason in misclassified():
        print(f"  MISS expected {case.expected}, got {predicted} ({reason}): {case.prompt[:70]!r}")
    assert score == pytest.approx(sum(n for (e, p), n in confusion.items() if e == p) / len(CASES))
    assert score >= 0.9


def test_classify_never_returns_auto_and_always_gives_a_reason() -> None:
    for case in CASES:
        complexity, reason = classify(case.request())
        assert complexity in (Complexity.SIMPLE, Complexity.COMPLEX)
        assert reason and len(reason) < 200
        assert f"{COMPLEX_THRESHOLD})" in reason


# --- signals ------------------------------------------------------------------------------


def test_signals_measure_size_and_code() -> None:
    s = signals(req(BUGGY, system="Be terse."))
    assert s.prompt_chars == len(BUGGY)
    assert s.approx_tokens == req(BUGGY, system="Be terse.").approx_input_tokens()
    assert s.code_fences == 2 and s.code_present
    assert "debug" in s.reasoning_cues


def test_code_without_fences_is_detected_by_tokens() -> None:
    code = "def total(xs):\n    return sum(x.price for x in xs)\n\nimport os\nconsole.log(a);"
    s = signals(req(f"why is this wrong\n{code}"))
    assert s.code_fences == 0 and s.code_token_kinds >= 2 and s.code_present
    assert not signals(req("I like to return home for the holidays.")).code_present


def test_signals_reasoning_cues() -> None:
    cues = signals(req("Prove it step by step, then analyze the trade-offs of the architecture "
                       "and refactor the module.")).reasoning_cues
    assert {"proof", "step-by-step", "trade-offs", "architecture", "refactor", "analysis"} <= set(
        cues
    )
    assert signals(req("A leak-proof bottle, please.")).reasoning_cues == ()


def test_signals_questions_lists_and_requested_size() -> None:
    s = signals(req("1. Why?\n2. How?\n3. When?\n4. Where?"))
    assert s.questions == 4 and s.list_items == 4
    assert signals(req("Write a 2000-word essay on tides.")).requested_words == 2000
    assert signals(req("Write about 1,500 words on tides.")).requested_words == 1500
    assert signals(req("A story, 5 pages long.")).requested_words == 2000
    assert signals(req("Write a detailed report.")).long_form
    assert signals(req("hi", max_tokens=9000)).max_tokens == 9000


def test_signals_tools_hint_and_simple_cues() -> None:
    s = signals(req(tools=(tool("a"), tool("b")), metadata={"complexity": "Complex"}))
    assert s.tools == 2 and s.hint is Complexity.COMPLEX
    assert signals(req(metadata={"complexity": "auto"})).hint is None
    assert signals(req("Translate 'cat' into German.")).simple_task
    assert signals(req("Answer in one word: is it red?")).brevity


def test_signals_are_frozen() -> None:
    s = signals(req())
    assert isinstance(s, Signals)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.tools = 3  # type: ignore[misc]


def test_signals_handle_hostile_max_size_input() -> None:
    # correctness only; how fast this is belongs in a benchmark, not a timed assertion
    for text in ("a" * MAX_PROMPT_CHARS, "1," * (MAX_PROMPT_CHARS // 2),
                 "x" + "\n" * (MAX_PROMPT_CHARS - 1), "O(" * (MAX_PROMPT_CHARS // 2)):
        complexity, reason = classify(req(text, system=text, max_tokens=1))
        assert complexity in (Complexity.SIMPLE, Complexity.COMPLEX) and reason


# --- the classifier -----------------------------------------------------------------------


def test_classifier_reason_names_the_deciding_features() -> None:
    complexity, reason = classify(req(BUGGY))
    assert complexity is Complexity.COMPLEX
    assert "code block" in reason and "debug" in reason
    complexity, reason = classify(req("Translate 'good night' into Italian."))
    assert complexity is Complexity.SIMPLE and "simple task" in reason
    assert classify(req("Hello there"))[1].startswith("no complexity signals")


def test_classifier_uses_output_size_and_tools() -> None:
    assert classify(req("Write about whales."))[0] is Complexity.SIMPLE
    assert classify(req("Write a 3000-word essay about whales.", max_tokens=8000))[0] is (
        Complexity.COMPLEX
    )
    agent = req("Find and book a table for four tonight.", tools=(tool("search"), tool("book")))
    assert classify(agent)[0] is Complexity.COMPLEX


def test_metadata_hint_decides_outright() -> None:
    assert classify(req(BUGGY, metadata={"complexity": "simple"})) == (
        Complexity.SIMPLE, "metadata hint simple"
    )
    assert classify(req(TRIVIAL, metadata={"complexity": "complex"}))[0] is Complexity.COMPLEX
    assert classify(req(TRIVIAL, metadata={"complexity": "weird"}))[0] is Complexity.SIMPLE


# --- route() ------------------------------------------------------------------------------


def test_route_classifies_auto_jobs() -> None:
    simple = route(req(TRIVIAL), DEFAULT_QUEUES)
    assert (simple.queue, simple.model, simple.complexity) == (SIMPLE_Q, HAIKU, Complexity.SIMPLE)
    hard = route(req(BUGGY), DEFAULT_QUEUES)
    assert isinstance(hard, Route)
    assert (hard.queue, hard.model, hard.complexity) == (COMPLEX_Q, SONNET, Complexity.COMPLEX)
    assert hard.reason == classify(req(BUGGY))[1]


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
    assert all(SECRET not in p[2] and "Debug this" not in p[2] for p in published)


def test_importing_routing_pulls_in_neither_celery_nor_settings_loading() -> None:
    code = (
        "import sys, farm.routing.classify, farm.routing.route\n"
        "bad = [m for m in ('celery', 'farm.app', 'farm.worker.tasks', 'farm.store.schema') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
