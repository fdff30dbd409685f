"""Host-level control of PostgreSQL nodes: what a failover needs beyond SQL.

Stopping a server, keeping a stopped one from coming back as a primary, pointing a standby at a new
upstream and rewinding a diverged data directory cannot be done through a database connection.
`NodeControl` is that contract; `SandboxNodeControl` implements it for the local sandbox (data
directories on this host, run as the `postgres` OS user). A production deployment implements the
same methods over its own channel (SSH, an agent, Patroni's REST API) and the failover logic stays
the same.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Protocol

from continuity.localcluster import ClusterError

log = logging.getLogger(__name__)


class NodeControlError(RuntimeError):
    """A host-level action on a node failed; the message names the node and the action."""


class NodeControl(Protocol):
    def is_running(self, name: str) -> bool: ...

    def stop(self, name: str, *, mode: str = "fast") -> None: ...

    def start(self, name: str) -> None: ...

    def checkpoint_lsn(self, name: str) -> str:
        """The last checkpoint's location from the control file (a cleanly stopped server's final LSN)."""
        ...

    def fence(self, name: str) -> None:
        """Make the node come back, if it is ever started, only as a standby (never writable)."""
        ...

    def unfence(self, name: str) -> None: ...

    def is_fenced(self, name: str) -> bool: ...

    def make_primary_settings(self, name: str, *, synchronous_standbys: list[str]) -> None:
        """Settings of a primary (no upstream; synchronous standbys), applied with a reload."""
        ...

    def follow(self, name: str, upstream: str) -> None:
        """Point a standby at `upstream` (its replication slot named after the standby) and apply it."""
        ...

    def ensure_slots(self, name: str, slots: list[str]) -> None: ...

    def rewind(self, name: str, source: str) -> str:
        """pg_rewind a stopped former primary from `source`; returns pg_rewind's last line."""
        ...


class SandboxNodeControl:
    """NodeControl over the sandbox's local data directories."""

    def __init__(self, sandbox: object) -> None:
        from continuity.sandbox import Sandbox

        assert isinstance(sandbox, Sandbox)
        self.sandbox = sandbox

    @classmethod
    def from_environment(cls) -> SandboxNodeControl:
        from continuity.sandbox import SANDBOX_ENV_VAR, Sandbox

        root = os.environ.get(SANDBOX_ENV_VAR)
        if not root:
            raise NodeControlError(
                f"no node control is configured: ${SANDBOX_ENV_VAR} is not set. Failover needs host-level access "
                f"to the nodes (stop, fence, rewind); in the sandbox `continuity sandbox env` sets it")
        return cls(Sandbox(root=root))

    def _cluster(self, name: str):
        try:
            return self.sandbox.cluster(name)
        except KeyError:
            raise NodeControlError(f"node {name!r} is not part of the sandbox at {self.sandbox.root}") from None

    def is_running(self, name: str) -> bool:
        return self._cluster(name).running

    def stop(self, name: str, *, mode: str = "fast") -> None:
        try:
            self._cluster(name).stop(mode=mode, timeout=60)
        except ClusterError as exc:
            raise NodeControlError(f"stopping node {name}: {exc}") from exc

    def start(self, name: str) -> None:
        try:
            self._cluster(name).start(timeout=60)
        except ClusterError as exc:
            raise NodeControlError(f"starting node {name}: {exc}") from exc

    def checkpoint_lsn(self, name: str) -> str:
        cluster = self._cluster(name)
        result = cluster.user.run([cluster.tool("pg_controldata"), "-D", str(cluster.data_dir)],
                                  what=f"pg_controldata of node {name}")
        match = re.search(r"^Latest checkpoint location:\s+(\S+)$", result.stdout, re.M)
        if not match:
            raise NodeControlError(f"pg_controldata of node {name} shows no latest checkpoint location")
        return match.group(1)

    def fence(self, name: str) -> None:
        cluster = self._cluster(name)
        cluster.user.write_file(cluster.data_dir / "standby.signal", "")

    def unfence(self, name: str) -> None:
        (self._cluster(name).data_dir / "standby.signal").unlink(missing_ok=True)

    def is_fenced(self, name: str) -> bool:
        return (self._cluster(name).data_dir / "standby.signal").exists()

    def make_primary_settings(self, name: str, *, synchronous_standbys: list[str]) -> None:
        self.sandbox._write_node_conf(name, synchronous_names=",".join(synchronous_standbys))
        if self.is_running(name):
            self._cluster(name).psql("SELECT pg_reload_conf();")

    def follow(self, name: str, upstream: str) -> None:
        self.sandbox._write_node_conf(name, upstream=upstream)
        self.fence(name)
        if self.is_running(name):
            # primary_conninfo is reloadable (PostgreSQL 13+): the WAL receiver restarts on the new upstream.
            self._cluster(name).psql("SELECT pg_reload_conf();")

    def ensure_slots(self, name: str, slots: list[str]) -> None:
        statements = "".join(
            f"SELECT pg_create_physical_replication_slot('{slot}') WHERE NOT EXISTS "
            f"(SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}');\n" for slot in slots
            if re.fullmatch(r"[a-z0-9_]+", slot))
        if statements:
            self._cluster(name).psql(statements)

    def rewind(self, name: str, source: str) -> str:
        cluster = self._cluster(name)
        port = self.sandbox.state["nodes"][source]["port"]
        source_info = (f"host=127.0.0.1 port={port} user=continuity_admin dbname=postgres "
                       f"application_name=continuity-rewind-{name}")
        # A crashed former primary is first recovered in single-user mode, which refuses standby mode:
        # lift the fence for the rewind (the server is stopped throughout) and put it back after.
        self.unfence(name)
        try:
            result = cluster.user.run(
                [cluster.tool("pg_rewind"), "--target-pgdata", str(cluster.data_dir), "--source-server", source_info,
                 "--progress"],
                what=f"pg_rewind of node {name} from {source}",
                env={"PGPASSWORD": self.sandbox.password("continuity_admin")}, timeout=900)
        except ClusterError as exc:
            raise NodeControlError(str(exc)) from exc
        finally:
            self.fence(name)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        return lines[-1] if lines else "pg_rewind finished"

