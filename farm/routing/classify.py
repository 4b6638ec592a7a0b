"""Classification: how complex a job is, from cheap signals of its text. Pure: no I/O.

``classify`` scores the job's ``Signals`` (read from the first and last 16k characters of
prompt and system): COMPLEX when the score is >= 3 (COMPLEX_THRESHOLD).

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
from dataclasses import dataclass

from farm.jobs import Complexity, JobRequest

COMPLEX_THRESHOLD = 3


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
