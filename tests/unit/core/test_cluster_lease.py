"""The cluster lease (#30 item 4) on directory locations that can be cut off: one holder at a time, named to
whoever is refused; a majority of locations suffices (one region's storage gone); expired leases are taken over;
a refused contender gives back what it took."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from continuity.failover.lease import LEASE_KEY, ClusterLease, LeaseHeld, LeaseLost

from tests.support.locations import RegionStorage

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _locations(tmp_path: Path) -> list[RegionStorage]:
    return [RegionStorage(name=name, region=region, path=tmp_path / name)
            for name, region in (("primary", "us-east-1"), ("dr", "us-west-2"), ("archive", "eu-west-1"))]


def test_a_second_run_is_refused_naming_the_holder_until_the_first_gives_it_back(tmp_path: Path) -> None:
    clock, locations = Clock(), _locations(tmp_path)
    lease = ClusterLease(locations, ttl=timedelta(minutes=30), clock=clock)
    held = lease.acquire(holder="dr_drill run d1", run_id="d1", purpose="live switchover to dr")
    with pytest.raises(LeaseHeld, match=r"held by dr_drill run d1 \(live switchover to dr\) until 2026-12-07 "
                                        r"12:30:00 UTC in archive, dr, primary; nothing was changed"):
        lease.acquire(holder="dr_failover run f1", run_id="f1", purpose="failover to dr")
    assert all(loc.head(LEASE_KEY) for loc in locations), "the refused run removed nothing of the holder's"
    assert lease.holder() == held
    clock.now = T0 + timedelta(minutes=2)
    assert sorted(lease.release("d1")) == ["archive", "dr", "primary"]
    assert lease.holder() is None
    ended = lease.last_released()  # what a health check run during the change needs once the lease is gone
    assert ended is not None and ended.lease == held and ended.released_at == T0 + timedelta(minutes=2)
    assert ended.describe() == "dr_drill run d1 (live switchover to dr), from 2026-12-07 12:00:00 to 12:02:00 UTC"
    assert lease.acquire(holder="dr_failover run f1", run_id="f1", purpose="failover to dr").run_id == "f1"


def test_a_retried_task_of_the_holding_run_takes_it_again(tmp_path: Path) -> None:
    lease = ClusterLease(_locations(tmp_path), ttl=timedelta(minutes=30), clock=Clock())
    lease.acquire(holder="dr_failover run f1", run_id="f1", purpose="switchover to dr")
    assert lease.acquire(holder="dr_failover run f1", run_id="f1", purpose="switchover to dr").run_id == "f1"


def test_a_lease_its_run_never_gave_back_expires_and_is_taken_over(tmp_path: Path) -> None:
    clock = Clock()
    lease = ClusterLease(_locations(tmp_path), ttl=timedelta(minutes=30), clock=clock)
    lease.acquire(holder="dr_drill run d1", run_id="d1", purpose="live switchover")
    clock.now = T0 + timedelta(minutes=31)
    assert lease.holder() is None
    assert lease.acquire(holder="dr_failover run f1", run_id="f1", purpose="failover").run_id == "f1"


def test_with_one_regions_storage_gone_a_majority_still_takes_it_and_two_gone_refuse(tmp_path: Path) -> None:
    locations = _locations(tmp_path)
    lease = ClusterLease(locations, ttl=timedelta(minutes=30), clock=Clock())
    locations[0].gone = True
    taken = lease.acquire(holder="dr_failover run f1", run_id="f1", purpose="failover to dr")
    assert lease.holder() == taken
    with pytest.raises(LeaseHeld, match="held by dr_failover run f1"):
        lease.acquire(holder="dr_drill run d1", run_id="d1", purpose="live switchover")
    lease.release("f1")
    locations[1].gone = True
    with pytest.raises(LeaseHeld, match=r"could be taken in 1 of 3 locations, 2 needed \(primary: .*Could not connect"):
        lease.acquire(holder="dr_drill run d1", run_id="d1", purpose="live switchover")
    assert locations[2].head(LEASE_KEY) is None, "the one location it took was given back"


def test_a_contender_holding_a_minority_gives_it_back_so_the_majority_holder_keeps_it(tmp_path: Path) -> None:
    """Two runs at once, interleaved: the one that took the first location of the other's majority is refused
    and leaves nothing behind."""
    locations = _locations(tmp_path)
    drill = ClusterLease(locations, ttl=timedelta(minutes=30), clock=Clock())
    failover = ClusterLease(list(reversed(locations)), ttl=timedelta(minutes=30), clock=Clock())
    locations[0].gone = True  # the drill reaches only dr and archive for a moment
    drill.acquire(holder="dr_drill run d1", run_id="d1", purpose="live switchover")
    locations[0].gone = False
    with pytest.raises(LeaseHeld, match="held by dr_drill run d1"):
        failover.acquire(holder="dr_failover run f1", run_id="f1", purpose="failover")
    assert locations[0].head(LEASE_KEY) is None, "the refused run gave back the location it had taken"
    assert drill.holder().run_id == "d1"


def test_renewal_pushes_the_expiry_and_a_lost_majority_is_said(tmp_path: Path) -> None:
    clock, locations = Clock(), _locations(tmp_path)
    lease = ClusterLease(locations, ttl=timedelta(minutes=30), clock=clock)
    held = lease.acquire(holder="dr_failover run f1", run_id="f1", purpose="switchover")
    clock.now = T0 + timedelta(minutes=20)
    renewed = lease.renew(held)
    assert renewed.expires_at == T0 + timedelta(minutes=50) and lease.holder().expires_at == renewed.expires_at
    clock.now = T0 + timedelta(minutes=51)  # expired, then taken by another
    lease.acquire(holder="dr_drill run d1", run_id="d1", purpose="live switchover")
    with pytest.raises(LeaseLost, match="held for it in 0 of 3 locations, 2 needed"):
        lease.renew(renewed)


def test_the_last_lease_given_back_is_the_newest_any_answering_location_holds(tmp_path: Path) -> None:
    clock, locations = Clock(), _locations(tmp_path)
    lease = ClusterLease(locations, ttl=timedelta(minutes=30), clock=clock)
    assert lease.last_released() is None
    lease.acquire(holder="dr_drill run d1", run_id="d1", purpose="live switchover to dr")
    clock.now = T0 + timedelta(minutes=1)
    lease.release("d1")
    locations[0].gone = True  # the primary region's storage cut off: the lease goes on in the other two
    lease.acquire(holder="dr_failover run f1", run_id="f1", purpose="failover to dr")
    clock.now = T0 + timedelta(minutes=3)
    assert sorted(lease.release("f1")) == ["archive", "dr"]
    ended = lease.last_released()
    assert ended is not None and ended.lease.run_id == "f1" and ended.released_at == T0 + timedelta(minutes=3)
    for location in locations[1:]:
        location.gone = True
    assert lease.last_released() is None, "nothing answers: nothing is known (the caller judges the checks as they are)"
