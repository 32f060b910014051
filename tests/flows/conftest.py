"""Flow tests share one Prefect test harness per session (see ``harness.py``)."""

from __future__ import annotations

import pytest

from tests.flows import harness


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """API URL of the session's temporary Prefect server."""
    return harness.start()


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest hook signature
    harness.stop()
