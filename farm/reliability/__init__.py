"""Reliability: nothing accepted is lost, nothing is done twice, failures end somewhere.

- ``policies``: the retry and dead-letter decision (pure) over a queue's ``RetryPolicy``.
- ``leases``: running jobs hold a lease in Postgres; a job whose worker died is re-queued.
- ``orphans``: queued jobs whose message Redis lost are published again.
- ``strays``: the farm's messages on queues no farm worker consumes go to the intake queue.
- ``loops``: the renewal, reaper and orphan-sweep threads of a worker process.
- ``hold``: the farm-wide hold (spend limit reached) and the ``Polled`` Redis value.
- ``dlq``: the dead-letter queue's rows and what operators do with them.
- ``idempotency``: one idempotency key of a tenant is one job (the request hash, the
  conflict rule; pure).
"""
