"""The order of a benchmark round's runs (ops/procs.py's in_turn): every variant takes every
place in turn, so a place's advantage (the run before leaves work behind) is shared."""

from __future__ import annotations

from tests_support import ops_module

procs = ops_module("procs")


def test_two_variants_alternate_which_goes_first() -> None:
    assert [procs.in_turn(("farm", "plain"), n) for n in range(4)] == [
        ["farm", "plain"], ["plain", "farm"], ["farm", "plain"], ["plain", "farm"]]


def test_every_variant_takes_every_place_once_in_as_many_rounds() -> None:
    variants = ("farm", "plain", "ceiling", "loop")
    rounds = [procs.in_turn(variants, n) for n in range(len(variants))]
    assert all(sorted(r) == sorted(variants) for r in rounds)
    for place in range(len(variants)):
        assert sorted(r[place] for r in rounds) == sorted(variants)


def test_no_variants_no_runs() -> None:
    assert procs.in_turn((), 3) == []
