"""The worker's request for farm.run_job: its argument reprs are always redacted.

The sender writes its own repr of the arguments into the message: the farm's router
redacts it, but a service that sends an inline job with plain Celery writes the prompt
there unless it passes ``kwargsrepr``. What the worker logs, sends to Flower (the
task-received event) and answers to `celery inspect` (active, reserved, scheduled: also
Flower's worker page) is the redacted repr instead: the job id, the queue, the request's
size.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

from farm.routing.router import redact_args, redact_kwargs


class RedactedRequest(Request):  # type: ignore[misc]  # celery ships no types
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argsrepr = self._request_dict["argsrepr"] = redact_args(self._args)
        self._kwargsrepr = self._request_dict["kwargsrepr"] = redact_kwargs(self._kwargs)

    def info(self, safe: bool = False) -> dict[str, Any]:
        # `celery inspect` asks for the raw arguments unless told safe: never give them
        shown: dict[str, Any] = super().info(safe=True)
        return shown
