"""Routing: which specialization queue (and model) serves a job, and why.

Pure: no I/O, no settings, no Celery import. ``route`` honours explicit choices (model, queue,
complexity), else ``classify`` scores the job's ``Signals`` (read from the first and last 16k
characters of prompt and system): COMPLEX when the score is >= 3 (COMPLEX_THRESHOLD).
``route_task`` is celeryconfig's Celery router; it keeps prompts out of task reprs.

Weights: code present (a fence, or >= 2 kinds of code token) +2 | proof/derivation +3 |
strong cue (step by step, architecture/system design, trade-offs, refactor, debug) +2 each |
weak cue (analyze, optimize, implement, design, math, plan/strategy, scale/concurrency/
tenancy) +1 each | all cues together capped at +5 | >= 3 question marks +2 | >= 4 list items
+1 | requested length >= 1500 / 600 words ("a 2000-word essay", 400 words a page) +3 / +2 |
long-form wording (essay, detailed, comprehensive, white paper...) +2 | max_tokens >= 8000 /
4000 / 2000 +3 / +2 / +1 | input >= 6000 / 1500 tokens +2 / +1 | tools >= 2 / 1 +3 / +2 |
simple-task wording (translate, classify, extract, summarize, a one-line wh-question...) -2 |
brevity (one word/sentence, briefly, short, tl;dr, yes or no) -1.
``metadata["complexity"]`` = "simple" or "complex" is the caller's hint and decides outright.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from farm.jobs import Complexity, JobRequest, Route
from farm.settings import DEFAULT_QUEUES, INTAKE_QUEUE, RUN_JOB_TASK, QueueSpec

COMPLEX_THRESHOLD = 3


class UnknownModelError(ValueError):
    """No configured queue serves the requested model."""
    def __init__(self, model: str, known: Sequence[str]) -> None:
        self.model, self.known = model, tuple(known)
        super().__init__(f"model: unknown model {model!r}; known: {', '.join(known) or 'none'}")


class UnknownQueueError(ValueError):
    """No configured queue has the requested name (or serves the requested complexity)."""
    def __init__(self, what: str, known: Sequence[str]) -> None:
        self.known = tuple(known)
        super().__init__(f"queue: unknown queue {what}; known: {', '.join(known) or 'none'}")


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.MULTILINE)


# Every pattern is linear on hostile input (bounded repeats): prompts reach 800k characters.
_FENCE = _rx(r"^[ \t]*(```|~~~)")
_CODE_TOKENS = tuple(_rx(p) for p in (
    r"\bdef \w+\s*\(", r"^[ \t]*class \w+\s*[:({]", r"^[ \t]*(import|from) [\w.]+",
    r"\bfunction\s*\w*\s*\(", r"=>", r"^[ \t]*return\b", r"[;{}][ \t]*$", r"#include\s*<",
    r"\bselect\b[^.?!\n]{0,200}\bfrom\s+\w", r"Traceback \(most recent call last\)",
    r"\b(console\.log|printf|println|System\.out)\b", r"\b(const|let|var)\s+\w+\s*=",
    r"\b(fn|func)\s+\w+\s*\(", r"\b(public|private)\s+(static\s+)?\w", r"\b(self|this)\.\w",
    r"\b\w{1,40}\[[^\]\n]{0,80}\][ \t]*=", r"\b\w{0,40}Error: ",
    r"^[ \t]*(if|for|while)\b.*[:{][ \t]*$",
))
# name -> (pattern, weight); a cue counts once however often it appears
_REASONING_CUES: dict[str, tuple[re.Pattern[str], int]] = {
    "step-by-step": (_rx(r"step[- ]by[- ]step|show (all )?(your|the) (work|reasoning)"), 2),
    "proof": (_rx(r"(?<![-\w])(prove|proof|derive|derivation|theorem|lemma|by induction)\b"), 3),
    "architecture": (_rx(r"\barchitect\w*|\bsystem design\b"
                         r"|design (a|an|the) \w+ (system|service|platform|pipeline)"), 2),
    "trade-offs": (_rx(r"trade[- ]?offs?|pros and cons|compare and contrast"), 2),
    "refactor": (_rx(r"\brefactor\w*|\brestructure\b"), 2),
    "debug": (_rx(r"\bdebug\w*|\bbug\b|stack ?trace|traceback|segfault|race condition"
                  r"|memory leak|root cause|(doesn't|does not|isn't|is not) work"
                  r"|\bfix (this|the|my) (code|bug|function|test|error)"), 2),
    "analysis": (_rx(r"\b(analy[sz]e|analysis|evaluate|assess|critique|diagnose)\b"), 1),
    "optimize": (_rx(r"\boptimi[sz]\w*|\bbottleneck|\bperformance\b|\bspeed up\b"), 1),
    "implement": (_rx(r"\bimplement\w*|\bwrite (a|an) (\w+ )?"
                      r"(function|program|script|class|parser|service|module)"), 1),
    "design": (_rx(r"\bdesign\b|\bschema\b"), 1),
    "math": (_rx(r"\b(probability|expected value|integral|derivative|eigen\w*|equations?)\b"), 1),
    "planning": (_rx(r"\b(strategy|roadmap|migration plan|plan (for|out)|go-to-market)\b"), 1),
    "scale/concurrency": (_rx(r"\bO\([^)\n]{0,20}\)|thread[- ]safe|concurren\w+|distributed"
                              r"|fault[- ]toleran\w+|idempoten\w+|\bat scale\b|scalab\w+"
                              r"|consisten(cy|t) model|multi[- ]tenan\w+"), 1),
}
_REASONING_CAP = 5
_LIST_ITEM = _rx(r"^[ \t]*(\d{1,3}[.)]|[-*\u2022]|[a-z][.)])[ \t]+\S")
_WORDS = _rx(r"(?<![\d,])(\d[\d,]{0,9})[ \t]*-?[ \t]*(words?|pages?)\b")
_LONG_FORM = _rx(r"\b(essay|detailed|comprehensive|in[- ]depth|thorough|long[- ]form|exhaustive"
                 r"|white ?paper|full (implementation|specification|report)|design doc\w*)\b")
_SIMPLE_TASK = _rx(r"\b(translate|classify|categori[sz]e|extract|sentiment|summari[sz]e|rephrase"
                   r"|paraphrase|reword|proofread|spell|convert|define|definition|capital of"
                   r"|synonym|antonym|label)\b|^[ \t]*(what|who|when|where|which|how many"
                   r"|how much|how do you say)\b[^\n]{0,80}\?[ \t]*$")
_BREVITY = _rx(r"\b(one|single|a few)[- ](word|sentence|line)s?\b|\bbriefly\b|\bbrief\b"
               r"|\bshort\b|\bconcise\b|tl;?dr|\byes or no\b|\bone-liner\b|\bin \d{1,2} words\b"
               r"|\bonly (the|a|one)\b")


@dataclass(frozen=True)
class Signals:
    """Features measured from one job; all cheap, all deterministic."""
    prompt_chars: int
    approx_tokens: int
    code_fences: int  # fence lines (``` or ~~~), so a closed block counts 2
    code_token_kinds: int  # distinct kinds of code-looking tokens
    reasoning_cues: tuple[str, ...]
    questions: int
    list_items: int
    max_tokens: int
    requested_words: int  # from "a 2000-word essay", "5 pages" (400 words/page); 0 if none
    long_form: bool
    simple_task: bool
    brevity: bool
    tools: int
    hint: Complexity | None  # metadata["complexity"] when it is "simple" or "complex"

    @property
    def code_present(self) -> bool:
        return self.code_fences > 0 or self.code_token_kinds >= 2


def _window(text: str, size: int = 16_000) -> str:
    """The first and last `size` characters: where a long prompt's instructions sit."""
    return text if len(text) <= 2 * size else f"{text[:size]}\n{text[-size:]}"


def _requested_words(text: str) -> int:
    sizes = [int(n.replace(",", "")) * (400 if u[0] in "pP" else 1)
             for n, u in _WORDS.findall(text)]
    return max(sizes, default=0)


def signals(request: JobRequest) -> Signals:
    """Measure a job (no I/O; bounded cost even for an 800k-character prompt)."""
    prompt, system = _window(request.prompt), _window(request.system or "")
    text = f"{system}\n{prompt}" if system else prompt
    hint = request.metadata.get("complexity", "").strip().lower()
    return Signals(
        prompt_chars=len(request.prompt),
        approx_tokens=request.approx_input_tokens(),
        code_fences=len(_FENCE.findall(text)),
        code_token_kinds=sum(1 for p in _CODE_TOKENS if p.search(text)),
        reasoning_cues=tuple(name for name, (p, _) in _REASONING_CUES.items() if p.search(text)),
        questions=prompt.count("?"),
        list_items=len(_LIST_ITEM.findall(prompt)),
        max_tokens=request.max_tokens,
        requested_words=_requested_words(prompt),
        long_form=_LONG_FORM.search(prompt) is not None,
        simple_task=_SIMPLE_TASK.search(prompt) is not None,
        brevity=_BREVITY.search(prompt) is not None,
        tools=len(request.tools),
        hint=Complexity(hint) if hint in ("simple", "complex") else None,
    )


def _contributions(s: Signals) -> list[tuple[str, int]]:
    """(label, weight) of every feature that fired; weights as in the module docstring."""
    def tier(value: int, tiers: tuple[tuple[int, int], ...]) -> int:
        return next((weight for limit, weight in tiers if value >= limit), 0)

    out: list[tuple[str, int]] = []
    budget = _REASONING_CAP
    for name in sorted(s.reasoning_cues, key=lambda n: -_REASONING_CUES[n][1]):
        if budget > 0:
            out.append((f"{name} request", min(_REASONING_CUES[name][1], budget)))
            budget -= _REASONING_CUES[name][1]
    plural = "s" if s.tools > 1 else ""
    candidates = [
        ("code block" if s.code_fences else "code", 2 if s.code_present else 0),
        (f"{s.questions} questions", 2 if s.questions >= 3 else 0),
        (f"{s.list_items} list items", 1 if s.list_items >= 4 else 0),
        (f"~{s.requested_words} words requested", tier(s.requested_words, ((1500, 3), (600, 2)))),
        ("long-form output", 2 if s.long_form else 0),
        (f"max_tokens {s.max_tokens}", tier(s.max_tokens, ((8000, 3), (4000, 2), (2000, 1)))),
        (f"~{s.approx_tokens} input tokens", tier(s.approx_tokens, ((6000, 2), (1500, 1)))),
        (f"{s.tools} tool{plural}", tier(s.tools, ((2, 3), (1, 2)))),
        ("simple task", -2 if s.simple_task else 0),
        ("short answer", -1 if s.brevity else 0),
    ]
    return out + [c for c in candidates if c[1]]


def classify(request: JobRequest) -> tuple[Complexity, str]:
    """SIMPLE or COMPLEX (never AUTO) and a short reason naming the deciding features."""
    s = signals(request)
    if s.hint is not None:
        return s.hint, f"metadata hint {s.hint.value}"
    parts = _contributions(s)
    score = sum(w for _, w in parts)
    complexity = Complexity.COMPLEX if score >= COMPLEX_THRESHOLD else Complexity.SIMPLE
    # name the (up to 3) strongest features that pushed towards the answer
    sign = 1 if complexity is Complexity.COMPLEX else -1
    named = sorted(parts, key=lambda p: (p[1] * sign <= 0, -abs(p[1])))[:3]
    named = [p for p in named if p[1] * sign > 0] or named
    labels = " + ".join(label for label, _ in named) or "no complexity signals"
    return complexity, f"{labels} (score {score} {'>=' if sign > 0 else '<'} {COMPLEX_THRESHOLD})"


def queue_named(name: str, queues: Sequence[QueueSpec]) -> QueueSpec:
    for spec in queues:
        if spec.name == name:
            return spec
    raise UnknownQueueError(repr(name), [q.name for q in queues])


def queue_for_model(model: str, queues: Sequence[QueueSpec], prefer: str = "") -> QueueSpec:
    """The first queue serving `model`; one whose complexity is `prefer`, if there is one."""
    matches = [q for q in queues if q.model == model]
    if not matches:
        raise UnknownModelError(model, list(dict.fromkeys(q.model for q in queues)))
    return next((q for q in matches if q.complexity == prefer), matches[0])


def parse_and_route(raw: Any, queues: Sequence[QueueSpec]) -> tuple[JobRequest, Route]:
    """A job as given (a JobRequest or a mapping), validated, checked against the context
    window and routed. Raises pydantic's ValidationError or a ValueError ("field: …")."""
    request = raw if isinstance(raw, JobRequest) else JobRequest.model_validate(raw)
    request.check_fits_context()
    return request, route(request, queues)


def route(request: JobRequest, queues: Sequence[QueueSpec]) -> Route:
    """Explicit model (and queue), else explicit queue, else explicit complexity, else classify;
    UnknownModelError / UnknownQueueError ("model: …" / "queue: …") name unknown choices."""
    wanted, model, queue = request.complexity, request.model, request.queue
    if model is not None or queue is not None:
        # an explicit model must be configured even when an explicit queue is named too
        spec = queue_for_model(model, queues, wanted.value) if model is not None else None
        spec = queue_named(queue, queues) if queue is not None else spec
        assert spec is not None
        if wanted is Complexity.AUTO:  # the queue's, unless it is configured free-form
            wanted = next((c for c in Complexity if c.value == spec.complexity), wanted)
        explicit = " and ".join(k for k, v in (("model", model), ("queue", queue)) if v)
        return Route(queue=spec.name, model=model or spec.model, complexity=wanted,
                     reason=f"explicit {explicit}")
    reason = "explicit complexity"
    if wanted is Complexity.AUTO:
        wanted, reason = classify(request)
    found = next((q for q in queues if q.complexity == wanted.value), None)
    if found is None:
        raise UnknownQueueError(f"for complexity {wanted.value!r}", [q.name for q in queues])
    return Route(queue=found.name, model=found.model, complexity=wanted, reason=reason)


# --- the Celery router (resolved by name from celeryconfig.task_routes) ----------------------

_SHOWN = {"job_id": re.compile(r"[0-9A-Fa-f-]{1,64}"), "queue": re.compile(r"[\w.:-]{1,64}")}
_KEY = re.compile(r"[A-Za-z_]\w{0,63}")


def _redacted(value: Any) -> str:
    value = value.model_dump() if isinstance(value, JobRequest) else value
    if isinstance(value, Mapping):
        texts = [value.get("prompt"), value.get("system")]
        return f"<redacted {sum(len(t) for t in texts if isinstance(t, str))} chars>"
    if isinstance(value, str):
        return f"<redacted {len(value)} chars>"
    return f"<redacted {type(value).__name__}>"


def redact_kwargs(kwargs: Mapping[Any, Any]) -> str:
    """A repr of run_job's kwargs without prompt/system text: only a UUID-like job_id and a
    queue name are shown; every other value becomes '<redacted N chars>'."""
    shown: dict[str, str] = {}
    for index, (key, value) in enumerate(list(kwargs.items())[:16]):
        name = key if isinstance(key, str) and _KEY.fullmatch(key) else f"<key {index}>"
        pattern = _SHOWN.get(name)
        safe = pattern is not None and isinstance(value, str) and pattern.fullmatch(value)
        shown[name] = value if safe else _redacted(value)
    return repr(shown)


def route_task(
    name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
    options: Mapping[str, Any] | None, task: Any = None, **kw: Any,
) -> dict[str, Any] | None:
    """Celery router (``task_routes = ("farm.routing.route_task",)``); None for other tasks.

    For farm.run_job: always redacted argsrepr/kwargsrepr, and the queue: an explicit ``queue``
    option is kept (Celery's merge prefers the caller's options); else a ``queue`` kwarg; else
    an inline ``request`` classified against DEFAULT_QUEUES (a sender has no farm settings), or
    farm-intake when invalid or unroutable, where the worker records the failure."""
    if name != RUN_JOB_TASK:
        return None
    kwargs = kwargs or {}
    out: dict[str, Any] = {
        "argsrepr": "()" if not args else f"(<redacted {len(args)} positional args>)",
        "kwargsrepr": redact_kwargs(kwargs),
    }
    if (options or {}).get("queue"):
        return out
    if isinstance(queue := kwargs.get("queue"), str) and queue:
        return {**out, "queue": queue}
    if "request" not in kwargs:
        return out  # a job id only: Celery's task_default_queue (farm-intake) applies
    if set(kwargs) - {"job_id", "request", "queue"}:
        return {**out, "queue": INTAKE_QUEUE}
    try:
        _, chosen = parse_and_route(kwargs["request"], DEFAULT_QUEUES)
        return {**out, "queue": chosen.queue}
    except (ValidationError, ValueError, TypeError):
        return {**out, "queue": INTAKE_QUEUE}
