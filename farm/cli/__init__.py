"""The `farm` command: ``main`` (services, migrations, workers, simulator, jobs, reports,
dead letters, Flower), ``controls`` (limits, throttle, pause, resume, hold) and ``context``
(what every command shares: the settings, clients of the farm)."""
