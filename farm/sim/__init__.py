"""The simulator of the Claude Messages API: a real HTTP server the official SDK talks to
through ``ANTHROPIC_BASE_URL``, for the demo, the tests and the benchmarks (never silently
in place of the real API). ``server`` (the API: messages, token counting, streaming, faults
and markers), ``content`` (token estimates, prompt caching, the output's size and text) and
``limits`` (the provider's per-model rate-limit buckets and headers, burst window included).
"""
