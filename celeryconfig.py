"""Celery configuration of the farm: routing, delivery, and the retry/dead-letter policies.

This is the one place where queues, routes and per-queue retry policies are declared.
The broker URL is not here: it comes from the farm's settings (FARM_BROKER_URL or the
embedded Valkey) when the app is built (farm.app.create_app).
"""

from farm.broker.layout import (
    DEFAULT_PRIORITY,
    EXCHANGE,
    INTAKE_QUEUE,
    PRIORITY_STEPS,
    SEP,
    VISIBILITY_TIMEOUT_S,
    declare_queues,
)
from farm.reliability.policies import DEFAULT_RETRY_POLICY, RetryPolicy
from farm.settings import DEFAULT_QUEUES

# --- routing ------------------------------------------------------------------------------
# The specialization queues (FARM_QUEUES; these are the built-in ones: farm.app.create_app
# declares the configured ones), the intake queue for jobs sent with plain send_task that
# could not be routed at the sender, and the dead-letter queue, on one direct exchange.
task_queues = declare_queues(tuple(q.name for q in DEFAULT_QUEUES))
task_default_queue = INTAKE_QUEUE
task_default_exchange = EXCHANGE
task_default_routing_key = INTAKE_QUEUE
# A router named by string, for a service that has this config (not the farm's own app):
# `send_task("farm.run_job", kwargs={"request": {...}})` is classified and routed against
# the built-in queues, with the prompt redacted from the task's repr. The farm's own app
# routes with the configured queues instead (farm.app.create_app).
task_routes = ("farm.routing.router.route_task",)

# --- retry and dead-letter policies, per queue ------------------------------------------
farm_retry_policies = {
    "haiku-simple": RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_cap_s=30.0),
    "sonnet-complex": RetryPolicy(max_attempts=3, backoff_base_s=2.0, backoff_cap_s=60.0),
    # every other queue, FARM_QUEUES' own included
    "default": DEFAULT_RETRY_POLICY,
}

# --- delivery -----------------------------------------------------------------------------
# The transport is chosen by the broker URL's scheme, and farm.app.create_app makes redis://
# and rediss:// resolve to kombu's Redis transport except that an item which is not a message
# is dropped with a logged reason instead of stopping the worker (farm/broker/transport.py).
# No `broker_transport` path here: it would become the connection URL's scheme, which Flower
# cannot read ("'redis' broker is not supported").
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]  # pickle refused
event_serializer = "json"
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# the prefetch is the worker's elastic slots (farm.worker.pool_step): after a reconnect it
# starts again from the slots, not from Celery's own figure of the pool's size
worker_enable_prefetch_count_reduction = False
task_ignore_result = True  # results live in Postgres, not in a result backend
broker_connection_retry_on_startup = True
broker_transport_options = {
    # longer than the longest job (request timeout) plus its longest backoff
    "visibility_timeout": VISIBILITY_TIMEOUT_S,
    "priority_steps": list(PRIORITY_STEPS),
    "sep": SEP,
    "queue_order_strategy": "priority",
}
task_default_priority = DEFAULT_PRIORITY

# --- events, for Flower -------------------------------------------------------------------
worker_send_task_events = True  # FARM_TASK_EVENTS overrides
# no "task-sent" events: one more Redis publish per job on the submitter (about 0.8 ms CPU)
# for a state Flower can do without; received/started/succeeded/failed come from workers
task_send_sent_event = False
worker_hijack_root_logger = False
worker_redirect_stdouts = False
