"""One writer, always: the cluster lease every topology-changing run holds while it changes the cluster.

A switchover of a drill, the region-loss exercise and dr_failover each promote nodes; two of them at once can
leave two writable primaries. Each takes this lease before its first change and gives it back when done; a
second run is refused, naming the holder, before it changes anything.

The lease is one small JSON object (`locks/cluster-lease.json`) in each of the policy's storage locations, taken
with the storage's compare-and-set (S3 If-None-Match to create, If-Match to replace an expired one or renew our
own): a run holds the lease when a majority of the locations hold its record, so it can still be taken with one
region's storage gone (2 of 3), and two runs can never both hold a majority. A run that dies holding it loses it
at `expires_at` (renewed by each step while held).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel, ConfigDict

from continuity.storage.locations import PreconditionFailed, StorageError, StorageLocation

log = logging.getLogger(__name__)

LEASE_KEY = "locks/cluster-lease.json"
# The last lease given back, with when: a check that ran while a change held the lease, read after it gave it
# back, must still be able to tell that the change overlapped it (the health monitor's assessment).
RELEASED_KEY = "locks/cluster-lease-released.json"


class LeaseRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    holder: str  # who, in words: "dr_failover run manual__2026-12-07T10:00:00"
    run_id: str  # the run that holds it (a retried task of the same run takes it again)
    purpose: str  # what it changes: "switchover to dr"
    acquired_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        return f"{self.holder} ({self.purpose}) until {self.expires_at:%Y-%m-%d %H:%M:%S} UTC"


class ReleasedLease(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease: LeaseRecord
    released_at: datetime

    def describe(self) -> str:
        return (f"{self.lease.holder} ({self.lease.purpose}), from {self.lease.acquired_at:%Y-%m-%d %H:%M:%S} "
                f"to {self.released_at:%H:%M:%S} UTC")


class LeaseHeld(RuntimeError):
    """Another run holds the cluster lease (or too few locations answer to take it): nothing was changed."""


class LeaseLost(RuntimeError):
    """A renewal found the lease no longer ours in a majority of the locations."""


class ClusterLease:
    def __init__(self, locations: Sequence[StorageLocation], *, ttl: timedelta,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        if not locations:
            raise ValueError("the cluster lease needs at least one storage location")
        self.locations = list(locations)
        self.ttl = ttl
        self.clock = clock

    @property
    def quorum(self) -> int:
        return len(self.locations) // 2 + 1

    def _read(self, location: StorageLocation) -> tuple[LeaseRecord | None, str | None]:
        info = location.head(LEASE_KEY)
        if info is None:
            return None, None
        return LeaseRecord.model_validate_json(location.get_bytes(LEASE_KEY)), info.checksum

    def _take(self, location: StorageLocation, record: LeaseRecord) -> LeaseRecord | None:
        """None once `location` holds `record`; else the record of the run that holds it there."""
        current, checksum = self._read(location)
        data = record.model_dump_json().encode()
        if current is None:
            location.put_bytes(LEASE_KEY, data, exclusive=True)
            return None
        if current.run_id == record.run_id or current.expires_at <= self.clock():
            location.put_bytes(LEASE_KEY, data, if_checksum=checksum)
            return None
        return current

    def acquire(self, *, holder: str, run_id: str, purpose: str) -> LeaseRecord:
        """Take the lease for `run_id` in a majority of the locations, or raise LeaseHeld naming the holder (what
        this call took meanwhile is given back: a refused contender never blocks the other)."""
        now = self.clock()
        record = LeaseRecord(holder=holder, run_id=run_id, purpose=purpose, acquired_at=now, expires_at=now + self.ttl)
        taken: list[StorageLocation] = []
        holders: dict[str, LeaseRecord] = {}
        problems: list[str] = []
        for location in self.locations:
            try:
                other = self._take(location, record)
            except PreconditionFailed:  # another contender wrote it between our read and our write
                try:
                    other, _ = self._read(location)
                except StorageError as exc:
                    problems.append(f"{location.name}: {exc}")
                    continue
                if other is None:
                    problems.append(f"{location.name}: changed while it was being taken")
                    continue
            except StorageError as exc:
                problems.append(f"{location.name}: {exc}")
                continue
            if other is None:
                taken.append(location)
            else:
                holders[location.name] = other
        if len(taken) >= self.quorum:
            log.info("cluster lease taken by %s in %s", record.describe(), ", ".join(loc.name for loc in taken))
            return record
        for location in taken:
            self._give_back(location, run_id)
        if holders:
            first = next(iter(holders.values()))
            raise LeaseHeld(f"the cluster lease is held by {first.describe()} in "
                            f"{', '.join(sorted(holders))}; nothing was changed. HINT: wait for that run to end (or, "
                            f"if it died, for the lease to expire at {first.expires_at:%H:%M:%S} UTC)")
        raise LeaseHeld(f"the cluster lease could be taken in {len(taken)} of {len(self.locations)} locations, "
                        f"{self.quorum} needed ({'; '.join(problems)}); nothing was changed")

    def renew(self, record: LeaseRecord) -> LeaseRecord:
        """Push our lease's expiry on by the ttl; LeaseLost when a majority no longer holds it for us."""
        renewed = record.model_copy(update={"expires_at": self.clock() + self.ttl})
        kept = 0
        for location in self.locations:
            try:
                current, checksum = self._read(location)
                if current is not None and current.run_id == record.run_id:
                    location.put_bytes(LEASE_KEY, renewed.model_dump_json().encode(), if_checksum=checksum)
                    kept += 1
            except StorageError as exc:
                log.warning("cluster lease not renewed in %s: %s", location.name, exc)
        if kept < self.quorum:
            raise LeaseLost(f"the cluster lease of {record.holder} is held for it in {kept} of "
                            f"{len(self.locations)} locations, {self.quorum} needed")
        return renewed

    def release(self, run_id: str) -> list[str]:
        """Give the lease back wherever `run_id` holds it, leaving a record of when (`last_released`); the
        locations it was removed from."""
        return [location.name for location in self.locations if self._give_back(location, run_id)]

    def _give_back(self, location: StorageLocation, run_id: str) -> bool:
        try:
            current, checksum = self._read(location)
            if current is None or current.run_id != run_id:
                return False
            # The record first: a reader that finds no lease must be able to find the one just given back.
            released = ReleasedLease(lease=current, released_at=self.clock())
            location.put_bytes(RELEASED_KEY, released.model_dump_json().encode())
            location.delete(LEASE_KEY, if_checksum=checksum)
            return True
        except StorageError as exc:  # it expires by itself
            log.warning("cluster lease of run %s not removed from %s: %s", run_id, location.name, exc)
            return False

    def last_released(self) -> ReleasedLease | None:
        """The lease given back last, in any location that answers (None: none ever, or none answers)."""
        found = []
        for location in self.locations:
            try:
                if location.head(RELEASED_KEY) is not None:
                    found.append(ReleasedLease.model_validate_json(location.get_bytes(RELEASED_KEY)))
            except (StorageError, ValueError) as exc:
                log.warning("cannot read the last released cluster lease in %s: %s", location.name, exc)
        return max(found, key=lambda record: record.released_at, default=None)

    def holder(self) -> LeaseRecord | None:
        """The unexpired record a majority of the locations hold, if any."""
        now, seen = self.clock(), {}
        for location in self.locations:
            try:
                current, _ = self._read(location)
            except StorageError:
                continue
            if current is not None and current.expires_at > now:
                seen.setdefault(current.run_id, []).append(current)
        for records in seen.values():
            if len(records) >= self.quorum:
                return records[0]
        return None
