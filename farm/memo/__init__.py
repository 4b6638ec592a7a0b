"""Result memoization: a job that opts in (itself, its queue or its tenant) is answered
from an earlier identical job of its tenant, without a provider call, when that job
succeeded within the TTL; identical jobs in flight at the same time make one call.

- ``key``: the memo key, a hash of exactly the body the provider gets (canonical JSON);
- ``policy``: whether a job memoizes, for how long, and which answers may serve (pure);
- ``store``: the lookup of an earlier answer and the recording of a hit (Postgres);
- ``inflight``: the in-flight mark per (tenant, key) that makes one call of many (Redis);
- ``run``: the step the task (farm.worker.tasks) runs before admission.

Batch jobs memoize by the same rules, at their flush and their result (farm.batches.memo).
"""
