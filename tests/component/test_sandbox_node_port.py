"""A new sandbox node whose port another process bound between being chosen and being bound: moved to a fresh
port instead of failing `sandbox up` (a fresh `continuity run` right after a test run failed this way)."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from continuity_lab import sandbox as sandbox_module
from continuity_lab.sandbox import Sandbox


@pytest.fixture()
def sandbox() -> Iterator[Sandbox]:
    root = Path(tempfile.mkdtemp(prefix="continuity-node-port-"))
    root.chmod(0o755)  # PostgreSQL runs as its own OS user and must enter the root
    box = Sandbox(root=root)
    box._state = box._new_state()
    for directory in (box.logs_dir, box.socket_dir, root / "pg"):
        box.user.make_dir(directory, 0o755 if directory != box.socket_dir else 0o700)
    try:
        yield box
    finally:
        for name in box.state["nodes"]:
            box.cluster(name).stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


def test_a_node_port_bound_by_another_process_before_the_start_is_moved(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    name = sandbox.policy.topology.primary.name
    cluster = sandbox.cluster(name)
    cluster.initdb()
    with open(cluster.data_dir / "postgresql.conf", "a") as handle:
        handle.write("\ninclude_if_exists = 'node.conf'\n")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", cluster.port))
        squatter.listen()
        taken = cluster.port
        # Free when it was checked: the other process binds it between the check and the server's start.
        monkeypatch.setattr(sandbox_module, "port_is_free", lambda port: True)
        started: list[str] = []
        sandbox._start_new_node(name, started)
        moved = sandbox.state["nodes"][name]["port"]
        assert started == [f"postgres {name}"] and moved != taken
        assert "Address already in use" in sandbox.cluster(name).log_file.read_text()
        assert sandbox.cluster(name).psql("SHOW port").strip() == str(moved)
