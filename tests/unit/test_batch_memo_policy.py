"""Memoization at a flush, pure (farm.batches.policy.memo_fates): which of a flush's jobs
are hits, which are sent, which wait for an identical job's answer; exhaustively over small
flushes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from farm.batches.policy import MemoFate, Memoized, memo_fates

SEND, HIT, WAIT = MemoFate.SEND, MemoFate.HIT, MemoFate.WAIT
JOBS = [Memoized(tenant, key, answered) for tenant, key, answered in itertools.product(
    ("acme", "beta"), (None, "k1", "k2"), (False, True))]
PAIRS = [(tenant, key) for tenant in ("acme", "beta") for key in ("k1", "k2")]
FLIGHTS = [frozenset(c) for n in range(len(PAIRS) + 1) for c in itertools.combinations(PAIRS, n)]


def expected(jobs: Sequence[Memoized], in_flight: frozenset[tuple[str, str]]
             ) -> list[MemoFate]:
    """The rule, stated per job: no key, sent; an answer, a hit; its key in flight for its
    tenant, or an earlier job of the flush without an answer on the same tenant and key,
    it waits; else sent."""
    out = []
    for i, job in enumerate(jobs):
        if job.key is None:
            out.append(SEND)
        elif job.answered:
            out.append(HIT)
        elif (job.tenant, job.key) in in_flight or any(
                (e.tenant, e.key, e.answered) == (job.tenant, job.key, False)
                for e in jobs[:i]):
            out.append(WAIT)
        else:
            out.append(SEND)
    return out


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4])
def test_every_small_flush_against_every_set_in_flight(size: int) -> None:
    for jobs in itertools.product(JOBS, repeat=size):
        for flying in FLIGHTS:
            fates = memo_fates(jobs, flying)
            assert fates == expected(jobs, flying), (jobs, flying)
            sent = [(j.tenant, j.key) for j, f in zip(jobs, fates, strict=True)
                    if f is SEND and j.key is not None]
            # one call per tenant and key, never one already in flight
            assert len(sent) == len(set(sent)) and not set(sent) & flying
            # every key with no answer and none in flight gets its call: the first job's
            unanswered = [(j.tenant, j.key) for j in jobs if j.key and not j.answered]
            assert set(sent) == set(unanswered) - flying
            first = {pair: i for i, pair in reversed(list(enumerate(
                (j.tenant, j.key, j.answered) for j in jobs)))}
            assert all(fates[first[(*pair, False)]] is SEND for pair in sent)


def test_the_first_of_identical_jobs_goes_and_the_others_wait() -> None:
    jobs = [Memoized("acme", "k1"), Memoized("acme", "k1"), Memoized("acme", "k2"),
            Memoized("acme", "k1")]
    assert memo_fates(jobs, frozenset()) == [SEND, WAIT, SEND, WAIT]


def test_a_key_is_per_tenant() -> None:
    jobs = [Memoized("acme", "k1"), Memoized("beta", "k1")]
    assert memo_fates(jobs, frozenset()) == [SEND, SEND]
    assert memo_fates(jobs, frozenset({("beta", "k1")})) == [SEND, WAIT]


def test_an_answer_makes_a_hit_even_of_a_key_in_flight() -> None:
    jobs = [Memoized("acme", "k1", answered=True), Memoized("acme", "k1")]
    assert memo_fates(jobs, frozenset({("acme", "k1")})) == [HIT, WAIT]
    assert memo_fates(jobs, frozenset()) == [HIT, SEND]  # its TTL is shorter: it calls


def test_jobs_that_do_not_memoize_always_go() -> None:
    jobs = [Memoized("acme", None), Memoized("acme", None, answered=True)]
    assert memo_fates(jobs, frozenset({("acme", "k1")})) == [SEND, SEND]
