"""Two synchronous standbys, any one acknowledging (#30 item 9): the setting the primaries get, which standbys a new
primary waits for, and the commit-latency check that tells a frozen commit from a healthy one."""

from __future__ import annotations

import pytest

from continuity.failover import steps as failover
from continuity.health.checks import check_commit_latency, check_configuration
from continuity.policy.loading import load_policy
from continuity.policy.model import synchronous_standby_names
from continuity.postgres.node import NodeUnreachable

from tests.unit.core.test_failover_decisions import _cluster

POLICY = load_policy()


@pytest.mark.parametrize(("names", "quorum", "setting"), [
    (["sync1", "sync2"], 1, "ANY 1 (sync1, sync2)"),
    (["sync1"], 1, "ANY 1 (sync1)"),
    (["sync1", "sync2"], 3, "ANY 2 (sync1, sync2)"),  # never more than there are: that would freeze every commit
    ([], 1, ""),
])
def test_the_setting_a_primary_gets(names: list[str], quorum: int, setting: str) -> None:
    assert synchronous_standby_names(names, quorum=quorum) == setting


def test_a_new_primary_waits_for_no_standby_until_one_streams_then_for_every_synchronous_one_following_it() -> None:
    cluster, _, _ = _cluster()
    assert failover.synchronous_among(cluster, [], also=["sync1", "sync2"]) == []
    assert failover.synchronous_among(cluster, ["sync1"], also=["sync1", "sync2"]) == ["sync1", "sync2"], (
        "ANY 1: sync2 still catching up joins by itself, and sync1 alone lets commits go on")
    assert failover.synchronous_among(cluster, ["dr"], also=["sync1"]) == [], "an async standby counts for nothing"


class _Entry:
    name = "pgbouncer (continuity_app)"

    def __init__(self, seconds: float = 0.004, cut: str | None = None, error: Exception | None = None) -> None:
        self.seconds, self.cut, self.error = seconds, cut, error

    def commit_seconds(self, *, timeout: float) -> tuple[float, str | None]:
        assert timeout == POLICY.health_monitor.max_commit_latency.total_seconds()
        if self.error:
            raise self.error
        return self.seconds, self.cut


def test_a_commit_within_the_limit_is_healthy_and_says_how_long_it_took() -> None:
    [check] = check_commit_latency(POLICY, _Entry(0.004))
    assert check.healthy and check.reason == "a commit through pgbouncer (continuity_app) took 4 ms, within 2s"


def test_a_commit_cut_short_waiting_for_the_synchronous_standbys_is_a_failing_database_check() -> None:
    warning = "canceling wait for synchronous replication due to user request"
    [check] = check_commit_latency(POLICY, _Entry(2.01, cut=warning))
    assert not check.healthy and check.component == "database"
    assert check.reason.startswith("a commit through pgbouncer (continuity_app) waited 2.0s, over the limit of 2s "
                                   "(health_monitor.max_commit_latency): canceling wait for synchronous replication")
    assert "HINT" in check.reason
    [slow] = check_commit_latency(POLICY, _Entry(2.5))
    assert not slow.healthy


def test_an_entry_point_that_cannot_commit_is_a_failing_check_naming_why() -> None:
    [check] = check_commit_latency(POLICY, _Entry(error=NodeUnreachable("node x is unreachable: refused")))
    assert not check.healthy and check.reason == "node x is unreachable: refused"


def test_the_configuration_check_wants_every_synchronous_standby_named() -> None:
    class Primary:
        name = "primary"

        def __init__(self, names: str) -> None:
            self.names = names

        def settings(self, names):
            values = {"wal_level": "replica", "archive_mode": "on", "data_checksums": "on", "max_wal_senders": "10",
                      "synchronous_standby_names": self.names, "max_slot_wal_keep_size": "8192"}
            return {name: values[name] for name in names if name in values}

        def replication_slots(self):
            return []

    subject = "configuration of primary: synchronous_standby_names"
    good = {c.subject: c for c in check_configuration(POLICY, Primary("ANY 1 (sync1, sync2)"))}
    assert good[subject].healthy
    drift = {c.subject: c for c in check_configuration(POLICY, Primary("sync1"))}
    assert not drift[subject].healthy and "sync2" in drift[subject].reason
