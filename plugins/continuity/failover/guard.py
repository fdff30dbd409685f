"""Self-fencing beside the nodes: a primary that was deposed, or that cannot tell whether it was, stops.

When dr_failover cannot reach the old primary, the paused and repointed entry point keeps the application's
clients away from it; but behind a partition the old primary may still be running, and clients beside it that
do not come through the entry point (a connection opened before, a cached DNS answer, a job on its host) would
keep committing there after the new primary is promoted: writes that are acknowledged and then lost.

Patroni's answer is the leader key: a primary that cannot renew its key within the TTL demotes itself, and a
new leader is elected only after the TTL. Continuity's, with storage as the shared place both sides may reach:

- dr_failover, when it could not reach the old primary, publishes a deposition notice for it
  (`failover/deposed/<node>.json`) in a majority of the storage locations, then waits the guard's `ttl` + one
  `poll` (and a margin) before promoting anything;
- the guard (`continuity guard run`, one beside each region's nodes) reads the notices from the locations every
  `poll`. A node of its region that accepts writes is stopped and fenced (it can only come back as a standby)
  when a notice names it at its current timeline or later (a node promoted since is on a later timeline, which
  a stale notice does not bind), or when no majority of the locations has answered for `ttl` while not every
  standby in another region streams from it. That last condition is Patroni's failsafe mode: with storage
  unreachable from the primary region alone, a primary whose remote standbys still stream from it keeps running,
  since a failover would have had to cut them off first to promote one of them.

A majority published and a majority read always share a location, so within `ttl` of the publication the guard
has either seen the notice or stopped its node. The guard measures its own durations (a monotonic clock) and
dr_failover its own, so no two clocks need agree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict

from continuity.postgres.node import NodeUnreachable, PostgresNode
from continuity.storage.locations import StorageError, StorageLocation, key_safe

log = logging.getLogger(__name__)

DEPOSED_PREFIX = "failover/deposed/"
# A node's role, its timeline as a primary writes it (no checkpoint needed after a promotion) and the standbys
# streaming from it.
GUARD_STATE_QUERY = (
    "SELECT pg_is_in_recovery() AS in_recovery, CASE WHEN pg_is_in_recovery() THEN NULL ELSE "
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS guard_tli, "
    "ARRAY(SELECT application_name FROM pg_stat_replication WHERE state = 'streaming') AS streaming")
# Beyond ttl + poll: the guard's own stop of its node (an immediate shutdown takes about a second).
FENCE_MARGIN_SECONDS = 3.0


class DepositionNotice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str
    timeline: int  # the node's timeline when it was deposed: a node promoted since is not bound by the notice
    successor: str
    by: str  # which run, in words
    reason: str  # why the node itself could not be stopped
    deposed_at: datetime

    def describe(self) -> str:
        return (f"{self.node} deposed at {self.deposed_at:%Y-%m-%d %H:%M:%S} UTC by {self.by} "
                f"in favour of {self.successor} (timeline {self.timeline}): {self.reason}")


def notice_key(node: str) -> str:
    return f"{DEPOSED_PREFIX}{key_safe(node)}.json"


@dataclass
class BoardReading:
    answered: list[str]  # locations that answered within the timeout (with or without notices)
    failed: dict[str, str]  # location -> why it did not
    notices: dict[str, DepositionNotice]  # node -> its notice with the latest timeline


class NoticeBoard:
    """The deposition notices in every storage location; a majority of them is what counts."""

    def __init__(self, locations: Sequence[StorageLocation], *, timeout: float) -> None:
        if not locations:
            raise ValueError("the deposition notices need at least one storage location")
        self.locations = list(locations)
        self.timeout = timeout
        # Reads that hang (a partition that drops packets) must not hold the guard past its deadline: each read
        # runs in a pool thread and counts as unanswered once `timeout` has passed.
        self._pool = ThreadPoolExecutor(max_workers=2 * len(self.locations), thread_name_prefix="notice-board")

    @property
    def quorum(self) -> int:
        return len(self.locations) // 2 + 1

    def _names(self) -> list[str]:
        return [getattr(location, "name", location.describe()) for location in self.locations]

    def _in_parallel(self, action: Callable[[StorageLocation], object]) -> tuple[dict[str, object], dict[str, str]]:
        futures = {name: self._pool.submit(action, location) for name, location in zip(self._names(), self.locations)}
        wait_for_futures(list(futures.values()), timeout=self.timeout)
        done: dict[str, object] = {}
        failed: dict[str, str] = {}
        for name, future in futures.items():
            if not future.done():
                failed[name] = f"no answer within {self.timeout:g}s"
                continue
            try:
                done[name] = future.result()
            except (StorageError, ValueError) as exc:
                failed[name] = str(exc)
        return done, failed

    def publish(self, notice: DepositionNotice) -> tuple[list[str], dict[str, str]]:
        """Write `notice` everywhere that answers: (the locations that took it, the others with why)."""
        data = notice.model_dump_json().encode()
        done, failed = self._in_parallel(lambda location: location.put_bytes(notice_key(notice.node), data))
        return sorted(done), failed

    def read(self) -> BoardReading:
        def read_one(location: StorageLocation) -> list[DepositionNotice]:
            return [DepositionNotice.model_validate_json(location.get_bytes(key))
                    for key in location.list(DEPOSED_PREFIX) if key.endswith(".json")]

        done, failed = self._in_parallel(read_one)
        notices: dict[str, DepositionNotice] = {}
        for found in done.values():
            for notice in found:  # type: ignore[attr-defined]
                known = notices.get(notice.node)
                if known is None or (notice.timeline, notice.deposed_at) > (known.timeline, known.deposed_at):
                    notices[notice.node] = notice
        return BoardReading(answered=sorted(done), failed=failed, notices=notices)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Verdict:
    node: str
    action: Literal["fence", "keep", "none"]
    reason: str
    why: Literal["standby", "unreachable", "deposed", "primary", "failsafe", "cannot_tell"]


def decide(node: str, *, writable: bool, timeline: int | None, notice: DepositionNotice | None,
           since_quorum: float | None, ttl: float, remote_standbys: Sequence[str],
           streaming: Sequence[str]) -> Verdict:
    """What the guard does about one node that answered. `since_quorum`: seconds since the start of the last read
    that a majority of the locations answered (None: none yet); `streaming`: the standbys streaming from it."""
    if not writable:
        return Verdict(node, "none", f"{node} is a standby: nothing to guard", "standby")
    if notice is not None and timeline is not None and timeline <= notice.timeline:
        return Verdict(node, "fence", f"{notice.describe()}; {node} still accepts writes on timeline {timeline}: "
                                      f"stopping it so no client beside it commits there once {notice.successor} "
                                      f"is promoted", "deposed")
    if since_quorum is not None and since_quorum <= ttl:
        return Verdict(node, "keep", f"{node} is the primary and no notice deposes it", "primary")
    silent = "no majority of the storage locations has answered yet" if since_quorum is None else (
        f"no majority of the storage locations has answered for {since_quorum:.0f}s (ttl {ttl:g}s)")
    missing = [name for name in remote_standbys if name not in streaming]
    if remote_standbys and not missing:
        return Verdict(node, "keep", f"{silent}, but every standby in another region ({', '.join(remote_standbys)}) "
                                     f"streams from {node}: none of them can have been promoted (failsafe); "
                                     f"{node} stays the primary", "failsafe")
    not_streaming = ", ".join(missing) if missing else "none in another region"
    return Verdict(node, "fence", f"{silent} and not every standby in another region streams from {node} "
                                  f"(not streaming: {not_streaming}): it cannot tell whether a failover deposed "
                                  f"it, so it stops rather than risk a second writable primary", "cannot_tell")


@dataclass
class PrimaryGuard:
    """Guards the nodes of one region. `fence(node)` stops the node and makes it come back only as a standby."""

    nodes: Mapping[str, PostgresNode]
    remote_standbys: Mapping[str, list[str]]  # node -> the topology's nodes in other regions
    board: NoticeBoard
    fence: Callable[[str], None]
    ttl: float
    clock: Callable[[], float] = time.monotonic
    report: Callable[[str], None] = log.info
    last_quorum: float | None = None
    fenced: list[str] = field(default_factory=list)

    def tick(self) -> list[Verdict]:
        started = self.clock()
        reading = self.board.read()
        if len(reading.answered) >= self.board.quorum:
            self.last_quorum = started
        verdicts = []
        for name, node in self.nodes.items():
            verdict = self._judge(name, node, reading)
            verdicts.append(verdict)
            if verdict.action == "fence":
                self.report(f"FENCING {name}: {verdict.reason}")
                try:
                    self.fence(name)
                except Exception as exc:  # noqa: BLE001 - any failure is reported and retried next poll
                    self.report(f"could not stop {name} ({exc}): trying again at the next poll")
                    continue
                self.fenced.append(name)
                self.report(f"{name} stopped and fenced: it can only come back as a standby")
        return verdicts

    def _judge(self, name: str, node: PostgresNode, reading: BoardReading) -> Verdict:
        try:
            # One query, one connection per node and poll: the guard runs beside the database all the time.
            state = node.query_one(GUARD_STATE_QUERY)
        except NodeUnreachable as exc:
            return Verdict(name, "none", f"{name} does not answer ({exc}): nothing to stop", "unreachable")
        writable = not state["in_recovery"]
        timeline = state["guard_tli"]
        streaming = list(state["streaming"] or [])
        since = None if self.last_quorum is None else self.clock() - self.last_quorum
        return decide(name, writable=writable, timeline=timeline, notice=reading.notices.get(name), since_quorum=since,
                      ttl=self.ttl, remote_standbys=self.remote_standbys.get(name, []), streaming=streaming)

    def run(self, *, poll: float, stop: threading.Event) -> None:
        previous: dict[str, str] = {}  # node -> why, at the last poll
        while not stop.is_set():
            for verdict in self.tick():
                # One line per change of mind, not per poll: the log stays readable over weeks.
                if previous.get(verdict.node) != verdict.why and verdict.action != "fence":
                    self.report(f"{verdict.node}: {verdict.reason}")
                previous[verdict.node] = verdict.why
            stop.wait(poll)


@dataclass(frozen=True)
class Deposer:
    """What dr_failover needs to depose a primary it cannot reach: the notices and the guard's timing."""

    board: NoticeBoard
    ttl: float
    poll: float

    @property
    def wait_seconds(self) -> float:
        return self.ttl + self.poll + FENCE_MARGIN_SECONDS

    def notice(self, *, node: str, timeline: int, successor: str, by: str, reason: str) -> DepositionNotice:
        return DepositionNotice(node=node, timeline=timeline, successor=successor, by=by, reason=reason,
                                deposed_at=datetime.now(timezone.utc))


def remote_standbys_of(policy_nodes: Sequence[object]) -> dict[str, list[str]]:
    """node -> the topology's nodes in any other region (the policy's `topology.nodes`)."""
    return {node.name: [other.name for other in policy_nodes if other.region != node.region]  # type: ignore[attr-defined]
            for node in policy_nodes}


def deposer_for(policy: object, locations: Callable[[], object]) -> Deposer | None:
    """dr_failover's Deposer under `policy` (None without failover.primary_guard); `locations` is called only then."""
    settings = policy.failover.primary_guard  # type: ignore[attr-defined]
    if settings is None:
        return None
    poll = settings.poll.total_seconds()
    return Deposer(board=NoticeBoard(list(locations()), timeout=max(poll, 5.0)),  # type: ignore[call-overload]
                   ttl=settings.ttl.total_seconds(), poll=poll)
