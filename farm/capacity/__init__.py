"""Capacity: how fast and on which model calls may go, shared by the whole cluster.

Each concept is a pure half and a Redis half, checked step for step against each other:
``limits`` (rate-limit arithmetic) with ``limiter`` (its Lua script), and ``circuit`` (the
breaker's transitions) with ``breaker`` (its Lua script). ``memory`` runs the pure halves
in one process behind the same interface. ``admission`` is the gate a job passes before its
call; ``build`` makes all of them from the farm's settings.
"""
