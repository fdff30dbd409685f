"""Fakes of the failover collaborators for the fast tier: a node that answers like PostgreSQL from a
state the test sets, and NodeControl / Router implementations that act on those states and record
what they were asked. They implement the core's protocols; nothing here talks to a real server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from continuity.failover.nodecontrol import NodeControlError
from continuity.postgres.node import NodeUnreachable, StandbyReplication, WalReceiver
from continuity.failover.router import Endpoint, RouterError


@dataclass
class FakeNode:
    name: str
    writable: bool = False
    reachable: bool = True
    running: bool = True
    fenced: bool = False
    timeline: int = 1
    position: int = 0x3000000
    receiver_status: str = "streaming"  # a standby's WAL receiver ("stopped" once the primary is gone)
    last_message_age_seconds: float = 0.5
    streaming_to: list[str] = field(default_factory=list)  # a primary's standbys streaming from it
    executed: list[str] = field(default_factory=list)

    def _check(self) -> None:
        if not (self.reachable and self.running):
            raise NodeUnreachable(f"node {self.name} is unreachable (fake)")

    def lsns(self) -> dict[str, Any]:
        self._check()
        lsn = f"{self.position >> 32:X}/{self.position & 0xFFFFFFFF:X}"
        if self.writable:
            return {"current_lsn": lsn, "flush_lsn": lsn, "receive_lsn": None, "replay_lsn": None}
        return {"current_lsn": None, "flush_lsn": None, "receive_lsn": lsn, "replay_lsn": lsn}

    def is_in_recovery(self) -> bool:
        self._check()
        return not self.writable

    def query_one(self, sql: str, params: Any = None) -> dict[str, Any]:
        self._check()
        if "AS tli" in sql:
            return {"tli": self.timeline}
        if "pg_promote" in sql:
            self.writable, self.timeline = True, self.timeline + 1
            return {"ok": True}
        if "AS guard_tli" in sql:  # continuity.failover.guard.GUARD_STATE_QUERY
            return {"in_recovery": not self.writable, "guard_tli": self.timeline if self.writable else None,
                    "streaming": list(self.streaming_to) if self.writable else []}
        raise AssertionError(f"FakeNode {self.name} was asked an unexpected query: {sql[:80]}")

    def execute(self, sql: str, params: Any = None) -> None:
        self._check()
        self.executed.append(sql)

    def replication(self) -> list[StandbyReplication]:
        self._check()
        return [StandbyReplication(application_name=name, state="streaming", sync_state="async", sent_lsn=None,
                                   replay_lsn=None, lag_bytes=0, replay_lag_seconds=0.0) for name in self.streaming_to]

    def wal_receiver(self) -> WalReceiver | None:
        self._check()
        if self.writable:
            return None
        return WalReceiver(status=self.receiver_status, received_tli=self.timeline, flushed_lsn=None,
                           sender_host="127.0.0.1", sender_port=5432, slot_name=self.name,
                           last_message_age_seconds=self.last_message_age_seconds)


@dataclass
class FakeNodeControl:
    nodes: dict[str, FakeNode]
    unreachable_hosts: set[str] = field(default_factory=set)
    actions: list[str] = field(default_factory=list)

    def _host(self, name: str, action: str) -> FakeNode:
        if name in self.unreachable_hosts:
            raise NodeControlError(f"host of node {name}: connection timed out ({action})")
        self.actions.append(f"{action} {name}")
        return self.nodes[name]

    def is_running(self, name: str) -> bool:
        return self._host(name, "is_running").running

    def stop(self, name: str, *, mode: str = "fast") -> None:
        node = self._host(name, f"stop({mode})")
        node.running = False

    def start(self, name: str) -> None:
        node = self._host(name, "start")
        node.running = True
        if node.fenced:
            node.writable = False

    def fence(self, name: str) -> None:
        self._host(name, "fence").fenced = True

    def unfence(self, name: str) -> None:
        self._host(name, "unfence").fenced = False

    def is_fenced(self, name: str) -> bool:
        return self.nodes[name].fenced

    def checkpoint_lsn(self, name: str) -> str:
        node = self._host(name, "checkpoint_lsn")
        return f"{node.position >> 32:X}/{node.position & 0xFFFFFFFF:X}"

    def make_primary_settings(self, name: str, *, synchronous_standbys: list[str], quorum: int = 1) -> None:
        self._host(name, "make_primary_settings")

    def follow(self, name: str, upstream: str) -> None:
        self._host(name, f"follow({upstream})")

    def ensure_slots(self, name: str, slots: list[str]) -> None:
        self._host(name, "ensure_slots")

    def rewind(self, name: str, source: str) -> str:
        self._host(name, f"rewind({source})")
        return "Done!"


@dataclass
class FakeRouter:
    routes_to: Endpoint
    paused: bool = False
    actions: list[str] = field(default_factory=list)
    unreachable: bool = False  # every call fails, as a PgBouncer the control plane cannot reach

    def describe(self) -> str:
        return "fake entry point"

    def current(self) -> tuple[str, int] | None:
        return (self.routes_to.host, self.routes_to.port)

    def pause(self, *, timeout: float) -> None:
        if self.unreachable:
            raise RouterError("fake entry point: connection refused")
        self.actions.append("pause")
        self.paused = True

    def point_to(self, endpoint: Endpoint) -> None:
        self.actions.append(f"point_to {endpoint.node}")
        self.routes_to = endpoint

    def resume(self) -> None:
        self.actions.append("resume")
        self.paused = False
