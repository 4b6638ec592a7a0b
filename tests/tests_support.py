"""Small helpers shared by tests (importable: tests/ is on sys.path via rootdir conftest)."""

from __future__ import annotations

from farm.services import free_port

__all__ = ["free_port", "wait_port"]


def wait_port(port: int, timeout: float = 20.0) -> None:
    from farm.services import wait_port as listening

    if not listening(port, timeout):
        raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")
