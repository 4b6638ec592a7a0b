"""Celery configuration of the farm: routing, delivery, and the retry/dead-letter policies.

This is the one place where queues, routes and per-queue retry policies are declared.
The broker URL is not here: it comes from the farm's settings (FARM_BROKER_URL or the
embedded Valkey) when the app is built (farm.app.create_app).
"""

from kombu.entity import Exchange, Queue

from farm.dlq import DEAD_LETTER_QUEUE
from farm.policies import ErrorKind, RetryPolicy
from farm.settings import DEFAULT_QUEUES, INTAKE_QUEUE

# --- routing ------------------------------------------------------------------------------
# Specialization queues (their models are in farm settings: FARM_QUEUES), the intake queue
# for jobs sent with plain send_task that could not be routed at the sender, and the DLQ.
SPECIALIZATION_QUEUES = tuple(q.name for q in DEFAULT_QUEUES)

# one direct exchange; each queue is bound by its own name
FARM_EXCHANGE = Exchange("farm", type="direct")
task_queues = [
    Queue(name, FARM_EXCHANGE, routing_key=name)
    for name in (*SPECIALIZATION_QUEUES, INTAKE_QUEUE, DEAD_LETTER_QUEUE)
]
task_default_queue = INTAKE_QUEUE
task_default_exchange = "farm"
task_default_routing_key = INTAKE_QUEUE
# A router function, named by string: a service that only has this config (not the farm's
# code in its own modules) gets `send_task("farm.run_job", kwargs={"request": {...}})`
# classified and routed, with the prompt redacted from the task's repr.
task_routes = ("farm.routing.route_task",)

# --- retry and dead-letter policies, per queue ------------------------------------------
farm_retry_policies = {
    "haiku-simple": RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_cap_s=30.0),
    "sonnet-complex": RetryPolicy(max_attempts=3, backoff_base_s=2.0, backoff_cap_s=60.0),
    "default": RetryPolicy(
        max_attempts=3,
        retry_on=frozenset(
            {ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.SERVER,
             ErrorKind.TIMEOUT, ErrorKind.CONNECTION}
        ),
    ),
}

# --- delivery -----------------------------------------------------------------------------
# kombu's Redis transport, except that an item which is not a message is dropped with a
# logged reason instead of stopping the worker (farm/broker.py)
broker_transport = "farm.broker:Transport"
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]  # pickle refused
event_serializer = "json"
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_ignore_result = True  # results live in Postgres, not in a result backend
broker_connection_retry_on_startup = True
broker_transport_options = {
    # longer than the longest job (request timeout) plus its longest backoff
    "visibility_timeout": 3600,
    "priority_steps": [0, 3, 6],
    "sep": ":",
    "queue_order_strategy": "priority",
}
task_default_priority = 3

# --- events, for Flower -------------------------------------------------------------------
worker_send_task_events = True  # FARM_TASK_EVENTS overrides
# no "task-sent" events: one more Redis publish per job on the submitter (about 0.8 ms CPU)
# for a state Flower can do without; received/started/succeeded/failed come from workers
task_send_sent_event = False
worker_hijack_root_logger = False
worker_redirect_stdouts = False
