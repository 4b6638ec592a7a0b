"""Message Batches: jobs that can wait (batch=True, a batching queue, a far deadline) are
collected per model into the provider's Message Batches at half price, polled, and their
results recorded exactly once, crash-safe, by a loop inside every worker.

- ``policy``: pure: which jobs batch, when a model's waiting jobs flush, how a flush splits,
  the poll backoff, what a result leads to;
- ``admit``: pure: the cost cap and the hard budgets, checked at flush at the batch price;
- ``submit``: the job row of a batch job (the client and the intake record it, unpublished);
- ``store``: every read and write of batches, batch items and waiting jobs;
- ``collector``: a flush: claim, build the request bodies, create the batch at the provider;
- ``memo``: memoization of batch jobs: hits and identical jobs held at flush, an answer's
  memo key kept after its result;
- ``poller`` and ``results``: follow a batch in flight and record its results;
- ``reconcile``: a batch its creator died creating: adopted, or its jobs released;
- ``loop``: the worker's background thread; ``control``: `farm batches` (list, show, cancel).
"""
