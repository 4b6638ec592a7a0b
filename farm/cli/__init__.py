"""The `farm` command: ``main`` (the group; services, migrations, workers, simulator,
Flower), ``jobs`` (submit, status, wait, cancel, report), ``dlq`` (the dead-letter queue),
``controls`` (limits, throttle, pause, resume, hold), ``render`` (what the job commands
print, pure) and ``context`` (what every command shares: the settings, clients of the
farm)."""
