"""The component tier: one real service each, started once per session by the tests that ask for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from continuity.postgres.cluster import stop_pid

from tests.support.s3server import S3Server, start_s3_server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3 server for the session's component tests; a test that kills an endpoint starts its own."""
    server, process = start_s3_server()
    try:
        yield server
    finally:
        stop_pid(process.pid, name="moto S3 server")
