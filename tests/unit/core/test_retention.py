"""Retention and the stale-backup alarm on a synthetic catalog built from real Manifest objects."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from continuity.storage.manifest import Manifest
from continuity.policy.loading import load_policy
from continuity.backup.validation import deep_sample, plan_retention, stale_categories
from continuity.backup.wal import find_gaps, segment_name

POLICY = load_policy()
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def _manifest(backup_id: str, kind: str, age: timedelta, **source) -> Manifest:
    finished = NOW - age
    return Manifest(backup_id=backup_id, kind=kind, started_at=finished - timedelta(minutes=1), finished_at=finished,
                    plaintext_bytes=1, compressed_bytes=1, stored_bytes=1, plaintext_sha256="0" * 64,
                    stored_sha256="0" * 64, chunk_size=1024, chunks=1,
                    key={"kek_id": "k", "alg": "AES-256-GCM", "wrapped": ""}, source=source)


def _catalog(days: int = 60) -> list[Manifest]:
    """A base backup and a logical dump every day, and 4 WAL segments a day, for `days` days."""
    manifests = []
    segno = 0x10
    for day in range(days, -1, -1):
        age = timedelta(days=day, hours=1)
        start = segment_name(1, segno)
        manifests.append(_manifest(f"physical-{day:03d}", "physical", age, start_wal_file=start, timeline=1))
        manifests.append(_manifest(f"logical-{day:03d}", "logical", age))
        for hour in range(4):
            manifests.append(_manifest(f"wal-{segment_name(1, segno)}", "wal", age - timedelta(hours=hour * 6),
                                       wal_file=segment_name(1, segno), timeline=1))
            segno += 1
    return manifests


def _kept(decisions, kind=None) -> set[str]:
    return {d.backup_id for d in decisions if d.keep and (kind is None or d.kind == kind)}


def test_primary_region_keeps_30_days_of_full_backups_and_the_whole_pitr_window() -> None:
    catalog = _catalog()
    decisions = plan_retention(POLICY, catalog, offsite=False, holds=set(), now=NOW)
    logical = sorted(_kept(decisions, "logical"))
    assert logical == sorted(f"logical-{d:03d}" for d in range(30))
    # The base backup from before the 30-day window opened is what makes its first moment restorable.
    physical = _kept(decisions, "physical")
    assert "physical-030" in physical and "physical-031" not in physical
    base_start = next(m for m in catalog if m.backup_id == "physical-030").source["start_wal_file"]
    kept_wal = sorted(m.source["wal_file"] for m in catalog if m.backup_id in _kept(decisions, "wal"))
    assert kept_wal[0] == base_start
    assert find_gaps(kept_wal, since=base_start) == [], "expiring WAL never opens a gap inside the window"
    for decision in decisions:
        assert decision.reason, decision


def test_every_deletion_has_a_reason_and_only_expired_backups_go() -> None:
    decisions = plan_retention(POLICY, _catalog(), offsite=False, holds=set(), now=NOW)
    deleted = [d for d in decisions if not d.keep]
    assert deleted
    for decision in deleted:
        assert "past its retention" in decision.reason


def test_offsite_keeps_full_backups_for_a_year() -> None:
    decisions = plan_retention(POLICY, _catalog(60), offsite=True, holds=set(), now=NOW)
    assert {d.backup_id for d in decisions if d.kind == "logical" and not d.keep} == set()


def test_a_backup_under_a_hold_survives() -> None:
    decisions = plan_retention(POLICY, _catalog(), offsite=False, holds={"logical-055"}, now=NOW)
    held = next(d for d in decisions if d.backup_id == "logical-055")
    assert held.keep and held.reason == "under a hold"


def test_newest_backups_are_kept_even_when_all_are_old() -> None:
    old = [_manifest(f"logical-old-{i}", "logical", timedelta(days=100 + i)) for i in range(5)]
    decisions = plan_retention(POLICY, old, offsite=False, holds=set(), now=NOW)
    assert _kept(decisions) == {"logical-old-0", "logical-old-1", "logical-old-2"}


def test_stale_backup_alarm_names_category_age_and_limit() -> None:
    fresh = [_manifest("wal-a", "wal", timedelta(minutes=50)), _manifest("config-a", "config", timedelta(hours=3))]
    assert stale_categories(POLICY, fresh, now=NOW) == []
    stale = [_manifest("wal-a", "wal", timedelta(hours=3)), _manifest("config-a", "config", timedelta(days=2))]
    alarms = stale_categories(POLICY, stale, now=NOW)
    assert "data category annotation_data: newest wal backup wal-a is 3h old, over its RPO maximum of 2h" in alarms
    assert "data category configuration_data: newest config backup config-a is 2d old, over its RPO maximum of 1d" in alarms
    assert stale_categories(POLICY, [], now=NOW)[0].startswith("data category annotation_data: no backup of kind wal")


@pytest.mark.parametrize("seed", ["run-1", "run-2"])
def test_deep_sample_is_newest_of_each_kind_plus_a_stable_random_sample(seed: str) -> None:
    catalog = _catalog(10)
    chosen = deep_sample(catalog, size=2, seed=seed)
    assert {"physical-000", "logical-000"} <= chosen
    assert len(chosen) == 3 + 2  # newest physical, logical, wal + 2
    assert deep_sample(catalog, size=2, seed=seed) == chosen


def test_dry_run_deletes_nothing_and_a_real_run_deletes_manifest_and_data(tmp_path) -> None:
    from continuity.storage.manifest import data_key_name, manifest_key_name
    from continuity.storage.locations import FileLocation
    from continuity.backup.validation import apply_retention

    location = FileLocation(name="primary", region="us-east-1", path=tmp_path)
    catalog = [_manifest("logical-old", "logical", timedelta(days=90))] + \
        [_manifest(f"logical-new-{i}", "logical", timedelta(days=i)) for i in range(3)]
    for manifest in catalog:
        location.put_bytes(manifest_key_name(manifest.backup_id), manifest.to_json())
        location.put_bytes(data_key_name(manifest.kind, manifest.backup_id), b"archive")
    decisions = plan_retention(POLICY, catalog, offsite=False, holds=set(), now=NOW)
    said: list[str] = []
    assert apply_retention(location, decisions, dry_run=True, report=said.append) == ["logical-old"]
    assert said == ["would delete logical-old from primary: 90d old, past its retention of 30d"]
    assert location.head(manifest_key_name("logical-old")) is not None
    assert apply_retention(location, decisions, dry_run=False, report=said.append) == ["logical-old"]
    assert location.head(manifest_key_name("logical-old")) is None
    assert location.head(data_key_name("logical", "logical-old")) is None
    assert location.head(manifest_key_name("logical-new-0")) is not None


def test_every_scheduled_backup_kind_has_a_freshness_alarm() -> None:
    from continuity.backup.validation import backup_schedules, stale_backup_kinds

    assert backup_schedules(POLICY)["logical"][0] == timedelta(days=1)
    assert backup_schedules(POLICY)["wal"][0] == timedelta(hours=4)
    fresh = [_manifest("logical-a", "logical", timedelta(hours=20)), _manifest("physical-a", "physical", timedelta(hours=20)),
             _manifest("wal-a", "wal", timedelta(hours=1)), _manifest("config-a", "config", timedelta(hours=3))]
    assert stale_backup_kinds(POLICY, fresh, now=NOW) == []
    # Daily full backups stopped 27 h ago: over 1 day + the 2 h grace, although WAL and config are fresh.
    stopped = [_manifest("logical-a", "logical", timedelta(hours=27)), _manifest("physical-a", "physical", timedelta(hours=25, minutes=59)),
               *fresh[2:]]
    alarms = stale_backup_kinds(POLICY, stopped, now=NOW)
    assert alarms == ["backup kind logical: newest backup logical-a is 27h old, over its period of 1d "
                      "(backups.full.schedule '0 2 * * *') plus the grace of 2h"]
    assert stale_categories(POLICY, stopped, now=NOW) == [], "the category alarm alone would have missed it"
    assert stale_backup_kinds(POLICY, fresh[:3], now=NOW) == [
        "backup kind config: no backup at all (scheduled every 1d by backups.configuration.frequency)"]
