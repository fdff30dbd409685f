"""The receivers (SMTP, Slack, PagerDuty stand-ins) when one of their ports is taken between being chosen and being
bound: started again on fresh ports instead of waited for (a fresh `continuity run` right after a test run failed
this way)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from continuity.postgres.cluster import free_port, stop_pid
from continuity_lab.parts import services
from continuity_lab.parts.services import ServicesPart


class Host(ServicesPart):
    """The least of a sandbox the receivers need: a root, its state and secrets."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs_dir = root / "logs"
        self.state = {"secrets": {}}

    def password(self, name: str) -> str:
        return self.state["secrets"][name]

    def _save_state(self) -> None:
        pass


def test_a_port_taken_before_the_receivers_bind_it_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        handed = iter([free_port(), free_port(), taken])  # the HTTPS port is the one someone else binds first
        monkeypatch.setattr(services, "free_port", lambda: next(handed, None) or free_port())
        monkeypatch.setattr(services, "port_is_free", lambda port: True)  # free when it was checked
        started: list[str] = []
        try:
            host._start_receivers(started)
            receivers = host.state["receivers"]
            assert started == ["receivers"] and receivers["https_port"] != taken
            assert "address already in use" in (tmp_path / "logs" / "receivers.log").read_text().lower()
            for key in ("smtp_port", "http_port", "https_port"):
                with socket.create_connection(("127.0.0.1", receivers[key]), timeout=2):
                    pass
        finally:
            if host.state.get("receivers", {}).get("pid"):
                stop_pid(host.state["receivers"]["pid"], name="receivers")
