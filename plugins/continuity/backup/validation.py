"""Daily validation: every copy of every backup checked in every location, bad copies repaired,
stale data categories alarmed, and retention applied without ever breaking the recovery window.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from continuity.storage import walindex
from continuity.storage.archive import IntegrityError
from continuity.backup.engine import record_verification, replicate_copy, verify_copy
from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring
from continuity.policy.kinds import KEPT_NEWEST_KINDS
from continuity.storage.manifest import Manifest, data_key_name, manifest_key_name
from continuity.policy.model import Policy, format_duration
from continuity.policy.loading import cron_period
from continuity.storage.locations import StorageError, StorageLocation
from continuity.backup.wal import classify

log = logging.getLogger(__name__)
HOLD_PREFIX = "holds/"


@dataclass
class Finding:
    backup_id: str
    location: str
    ok: bool
    action: str  # verified | repaired | missing | corrupt | unrepairable
    reason: str


@dataclass
class ValidationReport:
    findings: list[Finding] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> list[Finding]:
        return [f for f in self.findings if f.action == "repaired"]

    @property
    def unrepaired(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def to_dict(self) -> dict:
        return {"findings": [asdict(f) for f in self.findings], "stale": self.stale,
                "repaired": len(self.repaired), "unrepaired": len(self.unrepaired)}


def deep_sample(manifests: list[Manifest], *, size: int, seed: str) -> set[str]:
    """The newest backup of each kind, plus `size` others chosen at random (stable for a seed)."""
    newest: dict[str, Manifest] = {}
    for manifest in manifests:
        if manifest.kind not in newest or manifest.finished_at > newest[manifest.kind].finished_at:
            newest[manifest.kind] = manifest
    chosen = {m.backup_id for m in newest.values()}
    rest = sorted(m.backup_id for m in manifests if m.backup_id not in chosen)
    chosen |= set(random.Random(seed).sample(rest, min(size, len(rest))))
    return chosen


def validate_copies(
    catalog: Catalog,
    *,
    required: set[str],
    deep_ids: set[str],
    report: Callable[[str], None] = log.info,
) -> ValidationReport:
    """Verify every backup in every required location; repair missing or bad copies from a healthy one."""
    keyring = catalog.keyring
    locations = catalog.locations
    holders: dict[str, dict[str, Manifest]] = {}
    for name in locations:
        try:
            # Every copy as stored now: the WAL index first catches up with deletes and changes since its
            # last refresh (a copy it still listed but storage lost would fail to record its verification).
            walindex.refresh_index(locations[name], keyring, report=report)
            for manifest in catalog.manifests_in(name):
                holders.setdefault(manifest.backup_id, {})[name] = manifest
        except StorageError as exc:
            report(f"location {name} is unreachable: {exc}")
    result = ValidationReport()
    for backup_id, copies in sorted(holders.items()):
        deep = backup_id in deep_ids
        good: dict[str, Manifest] = {}
        bad: dict[str, str] = {}
        for name, manifest in copies.items():
            check = verify_copy(manifest, locations[name], keyring, deep=deep)
            record_verification(manifest, locations[name], keyring, check)
            (good.__setitem__(name, manifest) if check.ok else bad.__setitem__(name, check.reason))
        for name in sorted(required - set(good)):
            problem = bad.get(name, f"location {name} holds no copy of {backup_id}")
            action = "corrupt" if name in bad else "missing"
            # Prefer a required location as the source: it is the copy the policy vouches for.
            source_name = next(iter(sorted(good, key=lambda n: (n not in required, n))), None)
            if source_name is None:
                result.findings.append(Finding(backup_id, name, False, "unrepairable",
                                               f"{problem}; no location holds a good copy to repair from"))
                report(f"UNREPAIRABLE {backup_id} in {name}: {problem}; no good copy anywhere")
                continue
            try:
                # Repairs are verified deep: the new copy is decrypted end to end before it counts.
                replicate_copy(good[source_name], locations[source_name], locations[name], keyring, deep=True)
            except (StorageError, IntegrityError) as exc:
                result.findings.append(Finding(backup_id, name, False, "unrepairable", f"{problem}; repair failed: {exc}"))
                report(f"UNREPAIRABLE {backup_id} in {name}: repair from {source_name} failed: {exc}")
                continue
            result.findings.append(Finding(backup_id, name, True, "repaired",
                                           f"{action}: {problem}; repaired from {source_name} and verified deep"))
            report(f"REPAIRED {backup_id} in {name} ({action}) from {source_name}")
        for name in sorted(set(good)):
            result.findings.append(Finding(backup_id, name, True, "verified",
                                           f"{'deep' if deep else 'shallow'} verification passed"))
        for name in sorted(set(bad) - required):
            result.findings.append(Finding(backup_id, name, False, "corrupt", bad[name]))
    report(f"validated {len(holders)} backups: {sum(f.action == 'verified' for f in result.findings)} copies verified, "
           f"{len(result.repaired)} repaired, {len(result.unrepaired)} still bad")
    return result


def _newest(manifests: list[Manifest], kinds: Collection[str]) -> Manifest | None:
    return max((m for m in manifests if m.kind in kinds), key=lambda m: m.finished_at, default=None)


def _age(now: datetime, manifest: Manifest) -> tuple[timedelta, str]:
    age = now - manifest.finished_at
    return age, format_duration(timedelta(seconds=int(age.total_seconds())))


def stale_categories(policy: Policy, manifests: list[Manifest], *, now: datetime | None = None) -> list[str]:
    """Data categories whose newest backup (of the kinds that prove them) is older than their RPO maximum."""
    now = now or datetime.now(timezone.utc)
    alarms = []
    for name, category in policy.data_categories.items():
        if not category.backup_kinds:
            continue
        newest = _newest(manifests, category.backup_kinds)
        if newest is None:
            alarms.append(f"data category {name}: no backup of kind {'/'.join(category.backup_kinds)} at all "
                          f"(RPO maximum {format_duration(category.rpo.maximum)})")
            continue
        age, age_text = _age(now, newest)
        if age > category.rpo.maximum:
            alarms.append(f"data category {name}: newest {newest.kind} backup {newest.backup_id} is {age_text} old, "
                          f"over its RPO maximum of {format_duration(category.rpo.maximum)}")
    return alarms


def backup_schedules(policy: Policy) -> dict[str, tuple[timedelta, str]]:
    """Each scheduled backup kind: how often it is taken, and where the policy says so."""
    full = policy.backups.full.schedule
    full_period = cron_period(full)
    return {
        "logical": (full_period, f"backups.full.schedule {full!r}"),
        "physical": (full_period, f"backups.full.schedule {full!r}"),
        "wal": (policy.backups.incremental.frequency, "backups.incremental.frequency"),
        "config": (policy.backups.configuration.frequency, "backups.configuration.frequency"),
    }


def stale_backup_kinds(policy: Policy, manifests: list[Manifest], *, now: datetime | None = None) -> list[str]:
    """Scheduled backup kinds whose newest backup is older than their period plus the policy's grace."""
    now = now or datetime.now(timezone.utc)
    grace = policy.backups.freshness_grace
    alarms = []
    for kind, (period, source) in backup_schedules(policy).items():
        newest = _newest(manifests, {kind})
        if newest is None:
            alarms.append(f"backup kind {kind}: no backup at all (scheduled every {format_duration(period)} by "
                          f"{source})")
            continue
        age, age_text = _age(now, newest)
        if age > period + grace:
            alarms.append(f"backup kind {kind}: newest backup {newest.backup_id} is {age_text} old, over its period "
                          f"of {format_duration(period)} ({source}) plus the grace of {format_duration(grace)}")
    return alarms


# -- retention ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    backup_id: str
    kind: str
    keep: bool
    reason: str


def _retention_for(policy: Policy, kind: str, offsite: bool) -> timedelta | None:
    rules = {"logical": policy.backups.full.retention, "physical": policy.backups.full.retention,
             "wal": policy.backups.incremental.retention, "config": policy.backups.configuration.retention}.get(kind, {})
    return rules.get("offsite" if offsite else "primary_region") or (rules.get("primary_region") if offsite else None)


def plan_retention(policy: Policy, manifests: list[Manifest], *, offsite: bool, holds: set[str],
                   now: datetime | None = None) -> list[Decision]:
    """What to keep and delete in one location, each with its reason. Deletes nothing itself.

    Never deletes: a backup under a hold; the newest `keep_last` of each full kind; the base backup
    at the start of the point-in-time window and every base backup and WAL file after it; anything
    without a retention rule for its kind and location.
    """
    now = now or datetime.now(timezone.utc)
    decisions: list[Decision] = []
    window = policy.backups.point_in_time_recovery.window if policy.backups.point_in_time_recovery.enabled else None
    physical = sorted((m for m in manifests if m.kind == "physical"), key=lambda m: m.finished_at)
    window_base: Manifest | None = None
    if window is not None and physical:
        # The newest base backup finished before the window opens makes its first moment restorable.
        before = [m for m in physical if m.finished_at <= now - window]
        window_base = before[-1] if before else physical[0]
    pitr_from = window_base.source.get("start_wal_file") if window_base else None

    newest_by_kind: dict[str, list[str]] = {}
    for kind in KEPT_NEWEST_KINDS:
        ordered = sorted((m for m in manifests if m.kind == kind), key=lambda m: m.finished_at, reverse=True)
        newest_by_kind[kind] = [m.backup_id for m in ordered[: policy.backups.full.keep_last]]

    for manifest in sorted(manifests, key=lambda m: m.finished_at):
        age = now - manifest.finished_at
        limit = _retention_for(policy, manifest.kind, offsite)
        keep, reason = True, ""
        if manifest.backup_id in holds:
            reason = "under a hold"
        elif manifest.backup_id in newest_by_kind.get(manifest.kind, []):
            reason = f"one of the newest {policy.backups.full.keep_last} {manifest.kind} backups"
        elif window_base is not None and manifest.kind == "physical" and manifest.finished_at >= window_base.finished_at:
            reason = "base backup of the point-in-time recovery window"
        elif manifest.kind == "wal" and pitr_from is not None and _wal_at_or_after(manifest, pitr_from):
            reason = f"WAL inside the point-in-time recovery window (from {pitr_from})"
        elif limit is None:
            reason = f"no retention rule for {manifest.kind} in this location"
        elif age <= limit:
            reason = f"{format_duration(timedelta(seconds=int(age.total_seconds())))} old, within {format_duration(limit)}"
        else:
            keep = False
            reason = f"{format_duration(timedelta(seconds=int(age.total_seconds())))} old, past its retention of {format_duration(limit)}"
        decisions.append(Decision(manifest.backup_id, manifest.kind, keep, reason))
    return decisions


def _wal_at_or_after(manifest: Manifest, first: str) -> bool:
    wal = classify(manifest.source.get("wal_file", ""))
    start = classify(first)
    if wal is None or start is None:
        return True  # unknown shape: keep
    if wal.kind == "history":
        return wal.timeline >= start.timeline
    return (wal.timeline, wal.segno or 0) >= (start.timeline, start.segno or 0)


def read_holds(location: StorageLocation) -> set[str]:
    return {key[len(HOLD_PREFIX):] for key in location.list(HOLD_PREFIX)}


def apply_retention(location: StorageLocation, decisions: list[Decision], *, dry_run: bool,
                    keyring: Keyring | None = None, report: Callable[[str], None] = log.info) -> list[str]:
    """Delete what the plan says (manifest first, so a half-deleted backup is never listed), then drop the
    deleted WAL from the location's WAL index (with `keyring`; else the next refresh drops them)."""
    deleted = []
    for decision in decisions:
        if decision.keep:
            continue
        verb = "would delete" if dry_run else "deleting"
        report(f"{verb} {decision.backup_id} from {location.name}: {decision.reason}")
        if not dry_run:
            location.delete(manifest_key_name(decision.backup_id))
            location.delete(data_key_name(decision.kind, decision.backup_id))
        deleted.append(decision.backup_id)
    if keyring is not None and not dry_run and (packs := walindex.forget(location, keyring, deleted)):
        report(f"{packs} WAL index packs of {location.name} rewritten without the deleted WAL")
    return deleted

