"""The simulator for tests that need no process of it: served in this process by an event
loop on a background thread (``in_process_sim``), and its /_sim admin endpoints (``admin``)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from farm.sim.server import SimConfig, make_app


def admin(url: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    """GET (no payload) or POST one of the simulator's /_sim endpoints; its JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url + path, data=data, method="GET" if data is None
                                     else "POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@contextmanager
def in_process_sim(**config: Any) -> Iterator[str]:
    """The simulator on a free port, served by an event loop on a background thread."""
    loop = asyncio.new_event_loop()
    fast = {"ttft_s": 0.0, "output_tokens_per_s": 100_000.0, **config}
    runner = web.AppRunner(make_app(SimConfig(port=0, **fast)), access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
