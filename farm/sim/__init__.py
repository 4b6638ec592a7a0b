"""The simulator of the Claude Messages API: a real HTTP server the official SDK talks to
through ``ANTHROPIC_BASE_URL``, for the demo, the tests and the benchmarks (never silently
in place of the real API). ``server`` (the app: messages, token counting, streaming, faults
and markers, the /_sim admin routes), ``batches`` and ``batch_wire`` (the Message Batches
API), ``generate`` (one answer, shared by both), ``content`` (token estimates, prompt caching
and its minimum lengths, the output's size and text), ``answers`` (JSON, self-check, second
opinion, weak-model failures), ``limits`` (the provider's per-model rate-limit buckets and
headers), ``wire`` (API key, error object, markers, body validation), ``state`` (config and
mutable state) and ``billing`` (what the sim bills, at the farm's prices).
"""
