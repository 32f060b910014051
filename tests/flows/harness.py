"""One Prefect test harness (temporary server on SQLite) per pytest process.

Both ``tests/tasks`` and ``tests/flows`` need a Prefect API; starting the harness costs
10-20 s, so it is started once, lazily, and stopped when the session ends."""

from __future__ import annotations

from contextlib import ExitStack

_stack: ExitStack | None = None
_api_url: str | None = None


def start() -> str:
    """Start the harness if needed; return its API URL (for child processes)."""
    global _stack, _api_url
    if _stack is None:
        import prefect.settings
        from prefect.testing.utilities import prefect_test_harness

        stack = ExitStack()
        stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        _stack = stack
        _api_url = prefect.settings.PREFECT_API_URL.value()
    assert _api_url
    return _api_url


def stop() -> None:
    global _stack, _api_url
    if _stack is not None:
        _stack.close()
        _stack = _api_url = None
