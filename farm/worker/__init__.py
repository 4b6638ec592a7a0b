"""The worker: what runs inside `celery -A farm worker`.

``wiring`` builds the worker's app from the top (the tasks and the signal handlers are
installed on the app built by ``farm.app``, with the settings handed down typed);
``tasks`` are thin (load, admit, call, persist), with ``request`` redacting their
argument reprs; ``outcome`` says how a delivery ends as Celery and Flower see it (SUCCESS,
FAILURE with ``JobFailed``, REVOKED, or nothing) from the job's status; ``runtime`` holds a
process's resources;
``lifecycle`` is the worker's signal handlers (boot check, leases, bounded shutdown);
``command`` builds the `celery worker` command line and waits for readiness.
"""
