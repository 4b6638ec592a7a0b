"""The worker's request for farm.run_job: its argument reprs are always redacted.

Celery's task events (what Flower shows) and `celery inspect` carry a task's ``argsrepr``
and ``kwargsrepr`` as the SENDER wrote them: the farm's own router redacts them, but a
service that sends an inline job with plain Celery writes the prompt there unless it passes
``kwargsrepr``. The worker does not trust the sender: it shows only the job id and queue,
whatever the message says.
"""

from __future__ import annotations

from celery.worker.request import Request

from farm.routing.router import redact_kwargs


class RedactingRequest(Request):  # type: ignore[misc]  # celery ships no types
    @property
    def argsrepr(self) -> str:
        args = self._args
        return "()" if not args else f"(<redacted {len(args)} positional args>)"

    @property
    def kwargsrepr(self) -> str:
        kwargs = self._kwargs
        return redact_kwargs(kwargs) if isinstance(kwargs, dict) else "<redacted>"

    def info(self, safe: bool = False) -> dict[str, object]:
        # `celery inspect active/reserved` (and Flower's worker pages): never the arguments
        shown: dict[str, object] = super().info(safe=True)
        shown["args"], shown["kwargs"] = self.argsrepr, self.kwargsrepr
        return shown

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.humaninfo()} {self.argsrepr} {self.kwargsrepr}>"
