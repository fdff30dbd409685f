"""Host-level control of PostgreSQL nodes: what a failover needs beyond SQL.

Stopping a server, keeping a stopped one from coming back as a primary, pointing a standby at a new
upstream and rewinding a diverged data directory cannot be done through a database connection.
`NodeControl` is that contract. The policy names the implementation (`topology.node_control`) and
`node_control_for()` builds it: `sandbox` is `continuity.sandbox.SandboxNodeControl` (data directories
on this host, run as the `postgres` OS user); a production deployment implements the same methods
over its own channel (SSH, an agent, Patroni's REST API) and the failover logic stays the same.
This module never imports the sandbox unless the policy chooses it.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

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


def node_control_for(policy: Any) -> NodeControl:
    """The node control the policy names (`topology.node_control`): the one place it is chosen."""
    kind = policy.topology.node_control
    if kind is None:
        raise NodeControlError(
            "no node control is configured: set topology.node_control in the policy ('sandbox' for the local "
            "sandbox); failover needs host-level access to the nodes (stop, fence, rewind)")
    if kind == "sandbox":
        from continuity.sandbox import SandboxNodeControl  # only when the policy chooses the sandbox

        return SandboxNodeControl.from_environment()
    raise NodeControlError(f"topology.node_control {kind!r} has no implementation here")
