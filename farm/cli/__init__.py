"""The `farm` command: ``main`` (services, migrations, workers, simulator, jobs, reports,
dead letters, Flower), ``controls`` (limits, throttle, pause, resume, hold), ``context``
(what every command shares: the settings, clients of the farm) and ``flower`` (the Flower
process `farm flower` runs: Celery's, listing every queue of the farm)."""
