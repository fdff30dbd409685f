"""Degraded copies: a backup or WAL segment stored while one of its required locations did not answer.

"Required" means required while reachable: when a region's storage is gone, a backup that reaches every
surviving required location is kept (protection goes on), its manifest says which location it is missing
and why (`details["degraded"]`), and a marker `degraded/<missing location>/<backup id>` is written beside it
in every location that holds it. The catch-up (continuity.backup.catchup) copies each marked backup into
the location once it answers and removes the markers; the health monitor raises a critical alarm once a
location has been missing backups for longer than the policy's `storage.max_degraded`.

A location that failed with no answer at all (StorageUnreachable) is not asked again for RETRY_AFTER
seconds by this process: a WAL pusher otherwise spends every segment on connection timeouts and retries
against a region that is gone, and the spool it must keep empty fills.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict

from continuity.storage.locations import PreconditionFailed, StorageError, StorageLocation, StorageUnreachable

log = logging.getLogger(__name__)

DEGRADED_PREFIX = "degraded/"
RETRY_AFTER = 60.0

# location object -> (monotonic time it may be asked again, why it was given up)
_UNREACHABLE: weakref.WeakKeyDictionary[StorageLocation, tuple[float, str]] = weakref.WeakKeyDictionary()


class DegradedCopy(BaseModel):
    """One backup missing from one required location: what, where, since when and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backup_id: str
    kind: str
    missing: str
    reason: str
    since: datetime

    def describe(self) -> str:
        return f"{self.backup_id} ({self.kind}) missing from {self.missing} since {self.since:%Y-%m-%d %H:%M:%S %Z}"


def marker_key(missing: str, backup_id: str) -> str:
    return f"{DEGRADED_PREFIX}{missing}/{backup_id}.json"


# -- reachability ------------------------------------------------------------------------------
def given_up(location: StorageLocation) -> str | None:
    """Why `location` is not asked now (it did not answer within the last RETRY_AFTER seconds), else None."""
    entry = _UNREACHABLE.get(location)
    if entry is None:
        return None
    until, why = entry
    if time.monotonic() >= until:
        _UNREACHABLE.pop(location, None)
        return None
    return f"not asked again for {until - time.monotonic():.0f}s after it did not answer: {why}"


def note_failure(location: StorageLocation, exc: BaseException) -> None:
    """Remember a location that gave no answer at all (a refusal or a conflict is an answer: not remembered)."""
    if isinstance(exc, StorageUnreachable):
        _UNREACHABLE[location] = (time.monotonic() + RETRY_AFTER, str(exc).splitlines()[0][:300])


def forget_failures() -> None:
    """Ask every location again at once (a test, or an operator who knows the storage is back)."""
    _UNREACHABLE.clear()


def degrades(exc: BaseException) -> bool:
    """Whether a required location's failure leaves the backup degraded rather than failed: a location that
    did not answer or refused the write. Not a conflict with another writer (that is a decision to make)."""
    return isinstance(exc, StorageError) and not isinstance(exc, PreconditionFailed)


# -- markers -----------------------------------------------------------------------------------
def mark(holders: Iterable[StorageLocation], copies: Iterable[DegradedCopy]) -> None:
    """Write each marker to every location that holds the backup. The first marker of a backup and location
    stays (it says since when); a holder that does not take it is logged: the daily validation repairs a
    missing required copy even unmarked, the marker only makes the catch-up and the alarm prompt."""
    copies = list(copies)
    for holder in holders:
        for copy in copies:
            try:
                holder.put_bytes(marker_key(copy.missing, copy.backup_id), copy.model_dump_json().encode(),
                                 exclusive=True)
            except PreconditionFailed:
                pass  # marked before (an earlier attempt): its `since` is the one that counts
            except StorageError as exc:
                log.warning("%s: could not mark %s as missing from %s (validation still repairs it): %s",
                            holder.name, copy.backup_id, copy.missing, exc)


def clear(locations: Iterable[StorageLocation], missing: str, backup_id: str) -> list[str]:
    """Remove the markers of one caught-up copy; the names of locations that could not be cleared now
    (a leftover marker only makes the next catch-up find the copy already there)."""
    not_cleared = []
    for location in locations:
        try:
            if location.head(marker_key(missing, backup_id)) is not None:
                location.delete(marker_key(missing, backup_id))
        except StorageError as exc:
            log.warning("%s: marker of %s in %s not removed yet: %s", location.name, backup_id, missing, exc)
            not_cleared.append(location.name)
    return not_cleared


def marked_in(locations: Iterable[StorageLocation], missing: str, backup_id: str) -> bool:
    """Whether any answering location says `backup_id` is owed to `missing`."""
    for location in locations:
        try:
            if location.head(marker_key(missing, backup_id)) is not None:
                return True
        except StorageError:
            continue
    return False


def outstanding(locations: Mapping[str, StorageLocation]) -> tuple[list[DegradedCopy], dict[str, str]]:
    """Every degraded copy any answering location knows of (one per backup and missing location, the
    earliest `since`), and the locations that could not be listed, with why."""
    found: dict[tuple[str, str], DegradedCopy] = {}
    unanswered: dict[str, str] = {}
    for name, location in locations.items():
        if (why := given_up(location)) is not None:
            unanswered[name] = why
            continue
        try:
            keys = list(location.list(DEGRADED_PREFIX))
            for key in keys:
                try:
                    copy = DegradedCopy.model_validate(json.loads(location.get_bytes(key)))
                except (ValueError, StorageError) as exc:
                    log.warning("%s: unreadable degraded-copy marker %s: %s", name, key, exc)
                    continue
                current = found.get((copy.missing, copy.backup_id))
                if current is None or copy.since < current.since:
                    found[(copy.missing, copy.backup_id)] = copy
        except StorageError as exc:
            note_failure(location, exc)
            unanswered[name] = str(exc)
    return sorted(found.values(), key=lambda c: (c.missing, c.since, c.backup_id)), unanswered


def now() -> datetime:
    return datetime.now(timezone.utc)
