"""The guard beside the nodes (continuity.failover.guard) and the failover's deposition, on fakes and file
locations: when a primary stops itself, when it keeps running, and what dr_failover waits for."""

from __future__ import annotations

from datetime import timedelta

import pytest

from continuity.failover import records as failover_records
from continuity.failover import steps as failover
from continuity.failover.guard import Deposer, NoticeBoard, PrimaryGuard, decide, remote_standbys_of
from continuity.policy.loading import load_policy
from continuity.policy.model import PrimaryGuard as PrimaryGuardPolicy
from tests.fakes import FakeNode
from tests.support.locations import RegionStorage
from tests.unit.core.test_failover_decisions import _params, _partitioned

POLICY = load_policy()


@pytest.fixture
def storage(tmp_path) -> list[RegionStorage]:
    for name in ("primary", "dr", "offsite"):
        (tmp_path / name).mkdir()
    return [RegionStorage(name=name, region=name, path=tmp_path / name) for name in ("primary", "dr", "offsite")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _guard(storage, *, primary: FakeNode, clock: Clock, fenced: list[str]) -> PrimaryGuard:
    def fence(name: str) -> None:
        fenced.append(name)
        primary.running = False

    return PrimaryGuard(nodes={"primary": primary}, remote_standbys={"primary": ["dr"]},
                        board=NoticeBoard(storage, timeout=2), fence=fence, ttl=10, clock=clock,
                        report=lambda _m: None)


def test_a_primary_named_by_a_notice_at_its_timeline_is_fenced_and_a_later_timeline_is_not_bound(storage) -> None:
    deposer = Deposer(board=NoticeBoard(storage, timeout=2), ttl=10, poll=2)
    took, failed = deposer.board.publish(deposer.notice(node="primary", timeline=3, successor="dr",
                                                        by="the failover planned at noon", reason="timed out"))
    assert took == ["dr", "offsite", "primary"] and failed == {}
    clock, fenced = Clock(), []
    promoted_since = FakeNode(name="primary", writable=True, timeline=4, streaming_to=["dr"])
    assert _guard(storage, primary=promoted_since, clock=clock, fenced=fenced).tick()[0].why == "primary"
    assert fenced == []
    deposed = FakeNode(name="primary", writable=True, timeline=3, streaming_to=["dr"])
    verdict = _guard(storage, primary=deposed, clock=clock, fenced=fenced).tick()[0]
    assert verdict.action == "fence" and fenced == ["primary"]
    assert "deposed" in verdict.reason and "in favour of dr" in verdict.reason


def test_a_notice_in_one_location_of_a_majority_read_is_enough(storage) -> None:
    """Published to a majority, read from a majority: the two share a location."""
    storage[0].gone = True
    took, _ = NoticeBoard(storage, timeout=2).publish(
        Deposer(board=NoticeBoard(storage, timeout=2), ttl=10, poll=2).notice(
            node="primary", timeline=1, successor="dr", by="a run", reason="unreachable"))
    assert took == ["dr", "offsite"]
    storage[0].gone, storage[2].gone = False, True
    reading = NoticeBoard(storage, timeout=2).read()
    assert reading.answered == ["dr", "primary"] and "primary" in reading.notices


def test_without_a_majority_for_ttl_the_primary_stops_unless_its_remote_standbys_still_stream(storage) -> None:
    clock, fenced = Clock(), []
    primary = FakeNode(name="primary", writable=True, streaming_to=["dr"])
    guard = _guard(storage, primary=primary, clock=clock, fenced=fenced)
    assert guard.tick()[0].why == "primary"
    for location in storage[:2]:
        location.gone = True
    clock.now += 5
    assert guard.tick()[0].why == "primary", "within ttl of the last majority read: nothing changes"
    clock.now += 6
    verdict = guard.tick()[0]
    assert verdict.why == "failsafe" and "every standby in another region (dr) streams from primary" in verdict.reason
    primary.streaming_to = []
    verdict = guard.tick()[0]
    assert verdict.action == "fence" and fenced == ["primary"]
    assert "not streaming: dr" in verdict.reason and "for 11s (ttl 10s)" in verdict.reason


def test_a_guard_that_has_never_read_a_majority_does_not_assume_it_is_still_the_primary() -> None:
    verdict = decide("primary", writable=True, timeline=1, notice=None, since_quorum=None, ttl=10,
                     remote_standbys=[], streaming=[])
    assert verdict.action == "fence" and "no majority of the storage locations has answered yet" in verdict.reason
    standby = decide("sync1", writable=False, timeline=None, notice=None, since_quorum=None, ttl=10,
                     remote_standbys=["dr"], streaming=[])
    assert standby.action == "none"


def test_remote_standbys_are_the_nodes_of_other_regions() -> None:
    remote = remote_standbys_of(POLICY.topology.nodes)
    assert remote["primary"] == ["dr"] and remote["dr"] == ["primary", "sync1", "sync2"]


def test_the_guard_settings_refuse_a_poll_that_leaves_no_second_chance_within_ttl() -> None:
    with pytest.raises(ValueError, match="poll .* must be positive and at most a third of ttl"):
        PrimaryGuardPolicy(ttl=timedelta(seconds=10), poll=timedelta(seconds=5))
    assert POLICY.failover.primary_guard is not None, "the sandbox runs guards"


def test_the_failover_deposes_an_unreachable_old_primary_and_waits_for_its_guard(storage, monkeypatch) -> None:
    cluster, _, router = _partitioned()
    cluster.deposer = Deposer(board=NoticeBoard(storage, timeout=2), ttl=10, poll=2)
    slept: list[float] = []
    monkeypatch.setattr(failover.time, "sleep", slept.append)
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    record = failover.fence(cluster, plan)
    assert record.fenced_by_entry_point and record.deposed_in == ["dr", "offsite", "primary"]
    assert slept == [15.0] and record.guard_wait_seconds == 15.0
    notice = NoticeBoard(storage, timeout=2).read().notices["primary"]
    assert notice.successor == "dr" and notice.timeline == plan.old_timeline


def test_a_deposition_short_of_a_majority_refuses_and_resumes_the_entry_point(storage, monkeypatch) -> None:
    cluster, _, router = _partitioned()
    storage[0].gone = storage[1].gone = True
    cluster.deposer = Deposer(board=NoticeBoard(storage, timeout=2), ttl=10, poll=2)
    monkeypatch.setattr(failover.time, "sleep", lambda _s: None)
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    with pytest.raises(failover_records.FailoverError, match="the deposition of primary reached 1 of 3 storage "
                                                             "locations .*Nothing was promoted"):
        failover.fence(cluster, plan)
    assert router.paused is False and cluster.nodes["dr"].writable is False
    forced = failover.preflight(cluster, _params(mode="failover", force=True), primary="primary")
    assert failover.fence(cluster, forced).deposed_in == ["offsite"]
