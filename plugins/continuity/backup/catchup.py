"""The catch-up: every degraded backup and WAL segment copied into the required location it is missing from,
once that location answers again (continuity.storage.degraded says how they come to be).

Each copy is verified deep in its new location before its manifest is written (replicate_copy), then its
markers are removed everywhere; a location still unreachable is left for the next run and named. Run by
dr_wal_archive every hour and dr_backup_validation every day, and `continuity backups catch-up`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from continuity.backup.engine import load_manifest, replicate_copy
from continuity.storage import degraded as degradation
from continuity.storage.archive import IntegrityError
from continuity.storage.keys import Keyring, KeyringError
from continuity.storage.locations import StorageError, StorageLocation
from continuity.storage.manifest import Manifest, manifest_key_name

log = logging.getLogger(__name__)


class CatchUpReport(BaseModel):
    """What one catch-up did: copies made, copies still owed (per location, with the oldest and why)."""

    model_config = ConfigDict(extra="forbid")

    caught_up: list[str] = []  # "<backup id> -> <location>"
    already_there: list[str] = []
    still_missing: dict[str, int] = {}  # location -> backups it still lacks
    oldest_missing: dict[str, datetime] = {}  # location -> since when its oldest owed backup is missing
    why: dict[str, str] = {}  # location -> the last reason it could not be caught up
    unlisted: dict[str, str] = {}  # locations whose markers could not be read

    @property
    def degraded(self) -> bool:
        return bool(self.still_missing)

    def summary(self) -> str:
        done = f"{len(self.caught_up)} copies caught up, {len(self.already_there)} already there"
        if not self.still_missing:
            return f"{done}; nothing is degraded"
        owed = "; ".join(f"{name} still lacks {count} (oldest since {self.oldest_missing[name]:%Y-%m-%d %H:%M:%S %Z}:"
                         f" {self.why.get(name, 'not tried')})" for name, count in sorted(self.still_missing.items()))
        return f"{done}; DEGRADED: {owed}"


def catch_up(locations: Mapping[str, StorageLocation], keyring: Keyring, *,
             report: Callable[[str], None] = log.info, progress_every: int = 100) -> CatchUpReport:
    """Copy every marked backup into the location it is missing from, oldest first."""
    result = CatchUpReport()
    owed, result.unlisted = degradation.outstanding(locations)
    for name, why in result.unlisted.items():
        report(f"location {name}: degraded-copy markers not readable now: {why}")
    if not owed:
        report("no degraded backups: every required location holds every backup")
        return result
    report(f"{len(owed)} degraded copies to catch up: " + ", ".join(
        f"{name} {sum(c.missing == name for c in owed)}" for name in sorted({c.missing for c in owed})))
    for number, copy in enumerate(owed, 1):
        target = locations.get(copy.missing)
        if target is None:
            _still(result, copy, f"location {copy.missing} is no longer in the policy (its markers stay until "
                                 f"removed by hand)")
            continue
        if (why := degradation.given_up(target)) is not None:
            _still(result, copy, why)
            continue
        holders = {name: loc for name, loc in locations.items() if name != copy.missing}
        try:
            if target.head(manifest_key_name(copy.backup_id)) is not None:
                # Copied meanwhile (validation's repair, a retried push): only the markers are left.
                result.already_there.append(f"{copy.backup_id} -> {copy.missing}")
                degradation.clear(locations.values(), copy.missing, copy.backup_id)
                continue
            source_name, manifest = _a_holder(holders, copy.backup_id, keyring)
            replicate_copy(manifest, holders[source_name], target, keyring, deep=True)
        except (StorageError, IntegrityError, KeyringError) as exc:
            degradation.note_failure(target, exc)
            _still(result, copy, str(exc).splitlines()[0])
            continue
        degradation.clear(locations.values(), copy.missing, copy.backup_id)
        result.caught_up.append(f"{copy.backup_id} -> {copy.missing}")
        if number % progress_every == 0:
            report(f"catch-up: {number} of {len(owed)} done, {len(result.caught_up)} copied")
    report(result.summary())
    return result


def _a_holder(holders: Mapping[str, StorageLocation], backup_id: str,
              keyring: Keyring) -> tuple[str, Manifest]:
    problems = []
    for name, location in holders.items():
        if degradation.given_up(location) is not None:
            continue
        try:
            return name, load_manifest(location, backup_id, keyring)
        except (StorageError, IntegrityError, KeyringError) as exc:
            problems.append(f"{name}: {exc}")
    raise StorageError(f"backup {backup_id}: no answering location holds it to copy from: " + "; ".join(problems))


def _still(result: CatchUpReport, copy: degradation.DegradedCopy, why: str) -> None:
    result.still_missing[copy.missing] = result.still_missing.get(copy.missing, 0) + 1
    oldest = result.oldest_missing.get(copy.missing)
    if oldest is None or copy.since < oldest:
        result.oldest_missing[copy.missing] = copy.since
    result.why[copy.missing] = why
