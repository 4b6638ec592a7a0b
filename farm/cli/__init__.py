"""The `farm` command: ``main`` (the group; services, migrations, workers, simulator,
Flower), ``jobs`` (submit, status, wait, cancel, jobs), ``reports`` (report: a table, JSON
or an HTML page), ``dlq`` (the dead-letter queue), ``controls`` (limits, throttle, pause,
resume, hold), ``render`` and ``parsing`` (what the job commands print and read from their
options, pure), ``context`` (what every command shares: the settings, clients of the
farm), ``errors`` (one line, not a traceback, for an unreachable database or broker, a
missing schema, file or port) and ``flower`` (the Flower process `farm flower` runs:
Celery's, listing every queue of the farm)."""
