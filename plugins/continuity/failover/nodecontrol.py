"""Host-level control of PostgreSQL nodes: what a failover needs beyond SQL.

Stopping a server, keeping a stopped one from coming back as a primary, pointing a standby at a new
upstream and rewinding a diverged data directory cannot be done through a database connection.
`NodeControl` is that contract. The policy names the implementation (`topology.node_control`) and
`node_control_for()` builds it, found by name (`continuity.policy.registry`): `sandbox` is the development lab's
`continuity_lab.controls.SandboxNodeControl` (data directories on this host, run as the `postgres` OS
user); `ssh` is `continuity.failover.sshcontrol.SshNodeControl` (the same actions on each node's own host, over SSH). Another channel (an agent, Patroni's REST API)
implements the same methods and the failover logic stays the same.
The product never imports the lab.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
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

    def make_primary_settings(self, name: str, *, synchronous_standbys: list[str], quorum: int = 1) -> None:
        """Settings of a primary (no upstream; commits wait for `quorum` of `synchronous_standbys`), applied with a
        reload."""
        ...

    def follow(self, name: str, upstream: str) -> None:
        """Point a standby at `upstream` (its replication slot named after the standby) and apply it."""
        ...

    def ensure_slots(self, name: str, slots: list[str]) -> None: ...

    def rewind(self, name: str, source: str) -> str:
        """pg_rewind a stopped former primary from `source`; returns pg_rewind's last line."""
        ...


def latest_checkpoint_location(controldata: str, *, node: str) -> str:
    """The last checkpoint's LSN in pg_controldata's output."""
    match = re.search(r"^Latest checkpoint location:\s+(\S+)$", controldata, re.M)
    if not match:
        raise NodeControlError(f"pg_controldata of node {node} shows no latest checkpoint location")
    return match.group(1)


def slot_statements(slots: list[str]) -> str:
    """SQL creating each physical replication slot that does not exist (names that are not plain
    identifiers are skipped: they never come from a node name the policy accepts)."""
    return "".join(
        f"SELECT pg_create_physical_replication_slot('{slot}') WHERE NOT EXISTS "
        f"(SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}');\n" for slot in slots
        if re.fullmatch(r"[a-z0-9_]+", slot))


def node_control_for(policy: Any, *, shell_for: Callable[[str], Any] | None = None) -> NodeControl:
    """The node control the policy names (`topology.node_control`): the one place it is chosen, by name
    (`continuity.policy.registry`). `ssh` needs `shell_for` (a node's remote shell; the Airflow layer builds it from
    SSH connections)."""
    from continuity.policy.registry import build

    kind = policy.topology.node_control
    if kind is None:
        raise NodeControlError(
            "no node control is configured: set topology.node_control in the policy ('sandbox' for the local "
            "sandbox); failover needs host-level access to the nodes (stop, fence, rewind)")
    return build("node_control", kind, setting="topology.node_control", error=NodeControlError, policy=policy,
                 shell_for=shell_for)
