"""The workload of `make bench-cost` (ops/bench_cost_workload.py): deterministic, the mix it
states, repeats identical to an earlier job, shared contexts long enough to be cached, and
the two paths' jobs differing only in the features."""

from __future__ import annotations

import pytest

from farm.jobs import JobRequest
from farm.routing.route import parse_and_route
from farm.settings import Settings
from farm.sim.content import estimate_input_tokens
from tests_support import ops_module

workload = ops_module("bench_cost_workload")

HAIKU_MIN_CACHEABLE = 4096  # tokens: the largest minimum of the farm's models


def test_the_same_seed_gives_the_same_jobs_and_another_seed_others() -> None:
    assert workload.generate(200, 7) == workload.generate(200, 7)
    assert workload.generate(200, 7) != workload.generate(200, 8)


@pytest.mark.parametrize("n", [1, 2, 40, 1000])
def test_the_mix_is_the_stated_one(n: int) -> None:
    jobs = workload.generate(n, 15)
    assert [j.index for j in jobs] == list(range(n))
    repeats = [j for j in jobs if j.repeat_of is not None]
    originals = [j for j in jobs if j.repeat_of is None]
    assert len(repeats) == round(n * workload.REPEAT_SHARE)
    assert jobs[0].repeat_of is None  # the first job has nothing to repeat
    assert sum(j.context is not None for j in originals) == round(
        len(originals) * workload.PREFIX_SHARE)
    assert sum(j.batch for j in originals) == round(len(originals) * workload.BATCH_SHARE)
    # the originals are all different: a repeat is the only way to ask the same again
    asked = {(j.context, workload.farm_job(j)["prompt"]) for j in originals}
    assert len(asked) == len(originals)


def test_a_repeat_is_an_earlier_original_field_for_field() -> None:
    jobs = workload.generate(1000, 15)
    for job in jobs:
        if job.repeat_of is not None:
            first = jobs[job.repeat_of]
            assert first.index < job.index and first.repeat_of is None
            assert workload.farm_job(job) == workload.farm_job(first)
            assert workload.baseline_job(job) == workload.baseline_job(first)


def test_each_shared_context_is_above_every_models_minimum_cacheable_prefix() -> None:
    for ctx in workload.contexts(15).values():
        body = {"model": "m", "max_tokens": 1, "system": ctx.text,
                "messages": [{"role": "user", "content": "?"}]}
        assert estimate_input_tokens(body) >= 1.5 * HAIKU_MIN_CACHEABLE, ctx.name
    jobs = workload.generate(1000, 15)
    shared = [j for j in jobs if j.context]
    by_text = {j.fields.get("system") or j.fields["documents"][0] for j in shared}
    assert len(by_text) == len(workload.contexts(15))  # the same text each time: cacheable


def test_the_paths_differ_only_in_the_features_and_both_are_valid_jobs() -> None:
    settings = Settings()
    routed = set()
    for job in workload.generate(300, 15):
        farm, baseline = workload.farm_job(job), workload.baseline_job(job)
        assert farm["memo"] is True and farm["batch"] is job.batch
        assert farm["complexity"] == "auto" and "cache" not in farm
        assert baseline | {"complexity": "auto", "memo": True, "batch": job.batch} == {
            **farm, "cache": "off"}
        request, route = parse_and_route(farm, settings.queues)
        assert isinstance(request, JobRequest)
        routed.add(route.queue)
        assert parse_and_route(baseline, settings.queues)[1].queue == "sonnet-complex"
    assert routed == {"haiku-simple", "sonnet-complex"}  # the router gets both kinds


def test_describe_states_the_mix() -> None:
    text = workload.describe(workload.generate(1000, 15))
    assert text.startswith("1000 jobs: 300 (30%) exact repeats")
    assert "can wait (batch=True)" in text


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        workload.generate(0)
