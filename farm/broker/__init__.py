"""The broker: everything that knows kombu's Redis layout, in one place.

``layout`` holds the names on the wire (the task names, the intake and dead-letter queues),
the priority steps and the keys kombu keeps (a list per queue and priority step, the
``unacked`` hash and its index) and reads them; ``transport`` is kombu's Redis transport,
hardened so that an item on a queue that is not a message cannot stop a worker, and what
``redis://`` and ``rediss://`` URLs resolve to once the farm's app is built;
``connections`` is the worker's own Redis client (admission, leases, the hold flag), with
fewer system calls a command than redis-py's.
"""
