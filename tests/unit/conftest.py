"""The unit tier: no network and no processes. A test that needs either belongs to a costlier tier (tests/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from pytest_socket import disable_socket, enable_socket


class ProcessRefused(RuntimeError):
    """A unit test started a process: it belongs to the component tier or above."""


def _refuse(*args: object, **kwargs: object) -> None:
    raise ProcessRefused(f"the unit tier starts no process (asked: {args[0] if args else kwargs.get('args')!r})")


@pytest.fixture(autouse=True)
def _no_socket_no_subprocess(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    disable_socket(allow_unix_socket=False)
    monkeypatch.setattr(subprocess, "Popen", _refuse)
    try:
        yield
    finally:
        enable_socket()
