"""Each health check's verdict and reason sentence from what a node answers: a node that answers like
PostgreSQL from a state the test sets (nothing here talks to a server; the sandbox tests show the same
checks on real nodes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from continuity.health.checks import (check_archiver, check_commit_latency, check_entry_point, check_primary,
                                      check_standbys, check_storage)
from continuity.policy.loading import load_policy
from continuity.postgres.node import ArchiverStatus, NodeUnreachable, StandbyReplication, WalReceiver

POLICY = load_policy()
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


@dataclass
class AnsweringNode:
    """What the checks ask of a PostgresNode, answered from fields."""

    name: str
    in_recovery: bool = False
    reachable: bool = True
    tli: int = 1
    rows: list[StandbyReplication] = field(default_factory=list)
    receiver: WalReceiver | None = None
    archiver_status: ArchiverStatus | None = None
    commit: tuple[float, str | None] | Exception = (0.004, None)

    def _answer(self) -> None:
        if not self.reachable:
            raise NodeUnreachable(f"node {self.name} (host=127.0.0.1 port=1) is unreachable: connection refused")

    def is_in_recovery(self) -> bool:
        self._answer()
        return self.in_recovery

    def timeline(self) -> int:
        self._answer()
        return self.tli

    def replication(self) -> list[StandbyReplication]:
        self._answer()
        return self.rows

    def wal_receiver(self) -> WalReceiver | None:
        self._answer()
        return self.receiver

    def archiver(self) -> ArchiverStatus:
        self._answer()
        assert self.archiver_status is not None
        return self.archiver_status

    def commit_seconds(self, *, timeout: float) -> tuple[float, str | None]:
        self._answer()
        if isinstance(self.commit, Exception):
            raise self.commit
        return self.commit


def _streaming(name: str, *, lag: int | None = 1024, seconds: float | None = 0.2,
               state: str = "streaming") -> StandbyReplication:
    return StandbyReplication(application_name=name, state=state, sync_state="sync", sent_lsn="0/3000000",
                              replay_lsn="0/3000000", lag_bytes=lag, replay_lag_seconds=seconds)


def _receiver(status: str = "streaming") -> WalReceiver:
    return WalReceiver(status=status, received_tli=1, flushed_lsn="0/3000000", sender_host="127.0.0.1",
                       sender_port=5432, slot_name="dr")


def test_a_writable_primary_is_healthy_and_names_its_timeline() -> None:
    [check] = check_primary(POLICY, AnsweringNode("primary", tli=3))
    assert check.healthy and check.component == "database"
    assert check.reason == "primary primary is up and accepting writes on timeline 3" and check.details == {"timeline": 3}


def test_a_primary_in_recovery_or_unreachable_fails_saying_which() -> None:
    [in_recovery] = check_primary(POLICY, AnsweringNode("primary", in_recovery=True))
    assert not in_recovery.healthy and "is in recovery: it cannot accept writes" in in_recovery.reason
    [gone] = check_primary(POLICY, AnsweringNode("primary", reachable=False))
    assert not gone.healthy and gone.component == "database" and "unreachable: connection refused" in gone.reason


def test_standbys_streaming_within_limits_are_healthy_with_the_strictest_rpo_named() -> None:
    primary = AnsweringNode("primary", rows=[_streaming("dr")])
    [check] = check_standbys(POLICY, primary, {"dr": AnsweringNode("dr", in_recovery=True, receiver=_receiver())})
    assert check.healthy and check.component == "network"
    assert check.reason.startswith("standby dr is streaming (sync) 0.0 MiB and 0.2s behind")
    assert "(RPO target of " in check.reason
    assert check.details == {"lag_bytes": 1024, "replay_lag_seconds": 0.2, "sync_state": "sync"}


def test_each_standby_problem_is_its_own_failing_check() -> None:
    over_rpo = max(c.rpo.target for c in POLICY.data_categories.values()).total_seconds() * 10
    primary = AnsweringNode("primary", rows=[_streaming("late", seconds=over_rpo),
                                             _streaming("huge", lag=POLICY.health_monitor.max_lag_bytes + 1)])
    standbys = {
        "late": AnsweringNode("late", in_recovery=True, receiver=_receiver()),
        "huge": AnsweringNode("huge", in_recovery=True, receiver=_receiver()),
        "absent": AnsweringNode("absent", in_recovery=True, receiver=_receiver("stopped")),
        "writable": AnsweringNode("writable", in_recovery=False),
        "gone": AnsweringNode("gone", in_recovery=True, reachable=False),
    }
    checks = {c.subject: c for c in check_standbys(POLICY, primary, standbys)}
    assert not any(c.healthy for c in checks.values())
    assert "behind, over the" in checks["standby late"].reason and "s limit" in checks["standby late"].reason
    assert "MiB behind, over the" in checks["standby huge"].reason
    assert "is not connected to the primary (absent from pg_stat_replication)" in checks["standby absent"].reason
    assert "a second writable node besides the primary" in checks["standby writable"].reason
    assert "unreachable" in checks["standby gone"].reason


def test_standbys_cannot_be_judged_against_an_unreachable_primary_and_say_their_receiver() -> None:
    primary = AnsweringNode("primary", reachable=False)
    [check] = check_standbys(POLICY, primary, {"dr": AnsweringNode("dr", in_recovery=True,
                                                                  receiver=_receiver("waiting"))})
    assert not check.healthy
    assert check.reason == "standby dr cannot be compared with the unreachable primary (WAL receiver: waiting)"
    [no_receiver] = check_standbys(POLICY, primary, {"dr": AnsweringNode("dr", in_recovery=True)})
    assert "(WAL receiver: no WAL receiver)" in no_receiver.reason


def _archiver(*, archived: datetime | None, failed: datetime | None) -> ArchiverStatus:
    return ArchiverStatus(archived_count=12, last_archived_wal="000000010000000000000007", last_archived_time=archived,
                          failed_count=2 if failed else 0, last_failed_wal="000000010000000000000008" if failed else None,
                          last_failed_time=failed)


def test_the_archiver_fails_only_while_its_newest_event_is_a_failure() -> None:
    failing = AnsweringNode("primary", archiver_status=_archiver(archived=NOW - timedelta(minutes=5), failed=NOW))
    [check] = check_archiver(POLICY, failing, None)
    assert not check.healthy and check.component == "archiving"
    assert "archive_command is failing: last failure on 000000010000000000000008 at 2026-12-07 12:00:00 UTC" in check.reason
    healed = AnsweringNode("primary", archiver_status=_archiver(archived=NOW, failed=NOW - timedelta(minutes=5)))
    [check] = check_archiver(POLICY, healed, None)
    assert check.healthy and "12 files archived, last 000000010000000000000007" in check.reason


def test_a_spool_over_its_limit_fails_and_dot_files_do_not_count(tmp_path: Path) -> None:
    limit = POLICY.health_monitor.max_spool_files
    node = AnsweringNode("primary", archiver_status=_archiver(archived=NOW, failed=None))
    (tmp_path / ".in-progress").write_bytes(b"")
    for n in range(limit):
        (tmp_path / f"{n:024X}").write_bytes(b"")
    spool = check_archiver(POLICY, node, tmp_path)[1]
    assert spool.healthy and spool.details == {"files": limit} and f"within the limit of {limit}" in spool.reason
    (tmp_path / "one-more").write_bytes(b"")
    spool = check_archiver(POLICY, node, tmp_path)[1]
    assert not spool.healthy and f"{limit + 1} files wait in the WAL spool, over the limit of {limit}" == spool.reason


def test_a_spool_that_cannot_be_listed_is_a_failing_check(tmp_path: Path) -> None:
    node = AnsweringNode("primary", archiver_status=_archiver(archived=NOW, failed=None))
    spool = check_archiver(POLICY, node, tmp_path / "missing")[1]
    assert not spool.healthy and spool.reason.startswith("cannot list the WAL spool: No such file")


def test_an_unreachable_archiver_is_one_failing_check() -> None:
    assert [c.healthy for c in check_archiver(POLICY, AnsweringNode("primary", reachable=False), Path("/nowhere"))] == [False]


def test_the_entry_point_must_lead_to_a_writable_node() -> None:
    assert check_entry_point(AnsweringNode("pgbouncer"))[0].healthy
    [read_only] = check_entry_point(AnsweringNode("pgbouncer", in_recovery=True))
    assert not read_only.healthy and read_only.reason == "pgbouncer leads to a node in recovery: applications cannot write"
    assert not check_entry_point(AnsweringNode("pgbouncer", reachable=False))[0].healthy


def test_commit_latency_within_and_over_the_limit() -> None:
    limit = POLICY.health_monitor.max_commit_latency.total_seconds()
    [quick] = check_commit_latency(POLICY, AnsweringNode("pgbouncer", commit=(0.004, None)))
    assert quick.healthy and quick.reason == f"a commit through pgbouncer took 4 ms, within {limit:g}s"
    [slow] = check_commit_latency(POLICY, AnsweringNode("pgbouncer", commit=(limit + 1, None)))
    assert not slow.healthy and "over the limit" in slow.reason and "HINT:" in slow.reason
    cancelled = "canceling wait for synchronous replication due to user request"
    [cut] = check_commit_latency(POLICY, AnsweringNode("pgbouncer", commit=(limit, cancelled)))
    assert not cut.healthy and cut.reason.split("(health_monitor.max_commit_latency): ")[1].startswith(cancelled)


@pytest.mark.parametrize("error", [PermissionError("permission denied for database app"), RuntimeError("")])
def test_a_refused_commit_is_the_finding(error: Exception) -> None:
    [check] = check_commit_latency(POLICY, AnsweringNode("pgbouncer", commit=error))
    assert not check.healthy and check.reason.startswith(f"a commit through pgbouncer failed: {type(error).__name__}: ")


def test_storage_counts_only_required_locations_as_storage_failures() -> None:
    required = {location.name for location in POLICY.storage.locations if location.required}
    optional = {location.name for location in POLICY.storage.locations if not location.required}

    def probe(name: str) -> None:
        raise ConnectionError(f"endpoint of {name} refused")

    checks = {c.subject: c for c in check_storage(POLICY, probe)}
    assert all(not c.healthy for c in checks.values())
    assert {s.removeprefix("storage ") for s, c in checks.items() if c.component == "storage"} == required
    assert {s.removeprefix("storage ") for s, c in checks.items() if c.component == "configuration"} == optional
    assert all("is unreachable: ConnectionError: endpoint of" in c.reason for c in checks.values())
    assert all(c.healthy and c.reason.endswith("is reachable") for c in check_storage(POLICY, lambda name: None))
