"""The workload of `make bench-cost` (ops/bench_cost.py): one realistic mix of jobs, the same
for a seed and a size, generated without I/O but for reading the shipped prompt set.

The mix, in arrival order (fractions of the whole, exact up to rounding):
  * REPEAT_SHARE (30 %) are exact repeats of an earlier job (any earlier original, the
    same request field for field: what memoization can answer without a call);
  * of the originals, PREFIX_SHARE (50 %) ask about one of four long shared contexts of
    ~6,500 tokens each (above every model's minimum cacheable prefix, 4,096 tokens for
    claude-haiku-4-5): a support handbook sent as the system prompt, a services agreement,
    an API reference and a runbook sent as documents; the question after it is short and
    different per job (prompt caching reads the context instead of paying for it again);
  * the other originals are the prompts of the router's independent evaluation set
    (farm/routing/data/independent.jsonl: extraction, translation, debugging, system design
    …, labelled simple or complex by hand), each used once;
  * of the originals, BATCH_SHARE (30 %) can wait (batch=True: Message Batches at half
    price); the rest need an answer now (batch=False);
  * complexity is left to the router (auto): simple jobs go to claude-haiku-4-5, complex
    ones to claude-sonnet-5-5; the questions about the contexts are half short lookups, half
    analyses.
Repeats copy their original whole, so the shares of prefix and batch jobs over all jobs are
close to those of the originals; ``describe`` counts them as generated.

``farm_job`` is a job as the farm path submits it (all features on: memo=True, the prompt
cache by FARM_PROMPT_CACHE, batch as drawn, complexity auto); ``baseline_job`` the same job
everything-synchronous-on-the-complex-model: complexity complex, memo off, cache off, no batch.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "farm" / "routing" / "data" / "independent.jsonl"
TENANT = "bench-cost"
REPEAT_SHARE, PREFIX_SHARE, BATCH_SHARE = 0.30, 0.50, 0.30
CONTEXT_CHARS = 26_000  # ~6,500 tokens at 4 characters a token
MAX_TOKENS = 1024


@dataclass(frozen=True)
class Context:
    name: str
    title: str
    where: str  # "system" or "document"
    text: str


@dataclass(frozen=True)
class Job:
    """One job of the workload: its fields (no complexity, memo, cache: the paths set them)."""

    index: int
    fields: dict[str, Any]
    context: str | None  # the shared context's name, None for a standalone prompt
    batch: bool
    repeat_of: int | None  # the index of the original this job repeats


_TOPICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "handbook": ("Northwind Cloud customer support handbook", "system", (
        "refund", "ticket", "escalation", "invoice", "outage", "credit", "account owner",
        "billing contact", "priority", "service credit", "data export", "trial", "seat",
        "reseller", "chargeback", "SLA breach", "maintenance window", "status page")),
    "msa": ("Master services agreement between Northwind Cloud and the customer", "document", (
        "fee", "term", "renewal", "notice", "liability cap", "indemnity", "confidential "
        "information", "subprocessor", "audit", "termination", "uptime commitment",
        "personal data", "invoice", "dispute", "governing law", "force majeure")),
    "api": ("Northwind Payments API reference, v3", "document", (
        "endpoint", "idempotency key", "webhook", "payment intent", "refund", "currency",
        "rate limit", "pagination cursor", "API key", "signature", "retry", "payout",
        "balance transaction", "dispute", "test mode", "error code")),
    "runbook": ("Northwind platform on-call runbook", "document", (
        "alert", "pager", "database failover", "replica lag", "queue depth", "deploy",
        "rollback", "feature flag", "error budget", "dashboard", "incident commander",
        "status page", "load balancer", "certificate", "disk pressure", "postmortem")),
}
_VERBS = ("applies to", "takes precedence over", "is reviewed against", "is recorded with",
          "must be confirmed before", "is limited by", "is sent together with",
          "expires after", "is escalated with", "does not replace")
_WHEN = ("within 5 business days", "unless the account owner objects in writing",
         "once per calendar month", "for the region where the data is stored",
         "before the next billing cycle", "only in production", "after two failed attempts",
         "when the customer is on an enterprise plan", "at most 3 times",
         "as described in the previous section")
_SIMPLE_ASKS = (
    "What does section {k} say about the {a}? Answer in one short sentence.",
    "Quote the sentence of section {k} that mentions the {a}.",
    "Is the {a} covered by section {k}? Yes or no.",
    "Which section defines the {a}? Give the section number only.",
    "List the terms in section {k} in a short bullet list.",
)
_COMPLEX_ASKS = (
    "Compare sections {k} and {m}: where do the rules on the {a} and the {b} conflict, why "
    "does it matter for a customer, and how would you rewrite them? Reason step by step.",
    "A customer disputes how the {a} was handled under section {k}. Analyse the trade-offs "
    "of the options in sections {k} and {m}, explain the risks of each and recommend one.",
    "Design a procedure that satisfies sections {k} and {m} for the {a} and the {b}; "
    "explain the edge cases and why your design handles them.",
    "Explain why section {m} exists given section {k}, what would break without it for the "
    "{a}, and propose a better policy with its trade-offs.",
)


def context_text(name: str, seed: int) -> str:
    """~CONTEXT_CHARS of numbered sections of policy-like sentences on the context's topic."""
    title, _, terms = _TOPICS[name]
    rng = random.Random(f"{seed}:{name}")
    parts, size, k = [f"{title}\n\n"], len(title) + 2, 0
    while size < CONTEXT_CHARS:
        k += 1
        a = rng.choice(terms)
        lines = [f"Section {k}. {a[0].upper()}{a[1:]}\n"]
        for _ in range(rng.randint(6, 10)):
            lines.append(f"{k}.{len(lines)} The {rng.choice(terms)} {rng.choice(_VERBS)} the "
                         f"{rng.choice(terms)} {rng.choice(_WHEN)}; the {rng.choice(terms)} "
                         f"{rng.choice(_VERBS)} the {rng.choice(terms)}.\n")
        section = "".join(lines) + "\n"
        parts.append(section)
        size += len(section)
    return "".join(parts)


def contexts(seed: int) -> dict[str, Context]:
    return {name: Context(name, title, where, context_text(name, seed))
            for name, (title, where, _) in _TOPICS.items()}


def _sections(text: str) -> int:
    return text.count("\nSection ")


def standalone_prompts() -> list[str]:
    """The prompts of the router's independent evaluation set, in file order."""
    return [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()
            if line.strip()]


def _question(rng: random.Random, ctx: Context) -> str:
    terms = _TOPICS[ctx.name][2]
    sections = _sections(ctx.text)
    k, m = rng.sample(range(1, sections + 1), 2)
    a, b = rng.sample(terms, 2)
    asks = _SIMPLE_ASKS if rng.random() < 0.5 else _COMPLEX_ASKS
    return rng.choice(asks).format(k=k, m=m, a=a, b=b)


def _mask(rng: random.Random, n: int, share: float, first: bool = True) -> list[bool]:
    """Exactly round(n * share) True values in a random order (the first one False unless
    ``first``)."""
    mask = [True] * round(n * share) + [False] * (n - round(n * share))
    rng.shuffle(mask)
    if not first and mask and mask[0] and not all(mask):
        swap = mask.index(False)
        mask[0], mask[swap] = False, True
    return mask


def generate(n: int, seed: int = 15) -> list[Job]:
    """The workload of ``n`` jobs (n >= 1) in arrival order, the same for the same seed."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    rng = random.Random(seed)
    ctxs = list(contexts(seed).values())
    repeats = _mask(rng, n, REPEAT_SHARE, first=False)
    n_orig = repeats.count(False)
    with_context, batched = _mask(rng, n_orig, PREFIX_SHARE), _mask(rng, n_orig, BATCH_SHARE)
    pool = standalone_prompts()
    rng.shuffle(pool)
    jobs: list[Job] = []
    originals: list[Job] = []
    asked: dict[str, set[str]] = {ctx.name: set() for ctx in ctxs}
    for index, is_repeat in enumerate(repeats):
        if is_repeat:
            first = rng.choice(originals)
            jobs.append(Job(index, first.fields, first.context, first.batch, first.index))
            continue
        k = len(originals)
        fields: dict[str, Any] = {"max_tokens": MAX_TOKENS, "tenant": TENANT}
        ctx = rng.choice(ctxs) if with_context[k] else None
        if ctx is None:
            prompt = pool[k % len(pool)]
            fields["prompt"] = prompt if k < len(pool) else f"{prompt}\n\n(request {k})"
        else:
            while (question := _question(rng, ctx)) in asked[ctx.name]:
                pass  # each original is a different job: only repeats ask the same again
            asked[ctx.name].add(question)
            fields["prompt"] = question
            fields["system" if ctx.where == "system" else "documents"] = (
                ctx.text if ctx.where == "system" else (ctx.text,))
        job = Job(index, fields, ctx.name if ctx else None, batched[k], None)
        jobs.append(job)
        originals.append(job)
    return jobs


def farm_job(job: Job) -> dict[str, Any]:
    """All features on: the router decides, identical jobs answered once, the prompt cache
    (FARM_PROMPT_CACHE) on the shared contexts, the jobs that can wait batched."""
    return {**job.fields, "complexity": "auto", "memo": True, "batch": job.batch}


def baseline_job(job: Job) -> dict[str, Any]:
    """Everything synchronous on the complex model, nothing reused."""
    return {**job.fields, "complexity": "complex", "memo": False, "cache": "off",
            "batch": False}


def describe(jobs: list[Job]) -> str:
    """The mix as generated, one line per dimension."""
    n = len(jobs)
    repeats = sum(j.repeat_of is not None for j in jobs)
    by_ctx = Counter(j.context for j in jobs if j.context)
    batch = sum(j.batch for j in jobs)

    def pct(x: int) -> str:
        return f"{x} ({x / n:.0%})"

    ctx_text = ", ".join(f"{name} {count}" for name, count in sorted(by_ctx.items()))
    return (f"{n} jobs: {pct(repeats)} exact repeats of an earlier job; "
            f"{pct(sum(by_ctx.values()))} after a shared ~{CONTEXT_CHARS // 4:,}-token context "
            f"({ctx_text}); {pct(batch)} can wait (batch=True); the rest standalone prompts "
            "of the router's evaluation set; complexity left to the router")
