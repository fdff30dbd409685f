"""Object replication decisions that need no endpoint: the point-in-time view of a ledger, the
lifecycle rule from the policy, the stale alarm from checkpoints, listing against listing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from continuity.objects.ledger import Checkpoint, LedgerEntry, current_as_of

from continuity.objects.listing import CurrentListing, CurrentObject, compare_current

from continuity.objects.replication import lifecycle_rule, stale_object_categories
from continuity.policy.loading import load_policy

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _entry(event: str, key: str, minutes: int, version: str) -> LedgerEntry:
    return LedgerEntry(event=event, key=key, source_version_id=version, source_last_modified=T0 + timedelta(minutes=minutes),
                       replica_version_id=f"r-{version}" if event == "version" else None, copied_at=T0)


LEDGER = [
    _entry("version", "videos/a.mp4", 0, "a1"),
    _entry("version", "videos/b.mp4", 1, "b1"),
    _entry("version", "videos/a.mp4", 10, "a2"),   # overwritten at 10
    _entry("delete", "videos/b.mp4", 11, "b-del"),  # deleted at 11
    _entry("version", "videos/c.mp4", 20, "c1"),   # created at 20
    _entry("version", "videos/.continuity-heartbeat", 5, "hb"),
    _entry("version", "other/d.mp4", 0, "d1"),
]


def test_the_view_as_of_a_time_is_what_was_current_then() -> None:
    before = current_as_of(iter(LEDGER), as_of=T0 + timedelta(minutes=5), prefix="videos/")
    assert {k: e.source_version_id for k, e in before.items()} == {"videos/a.mp4": "a1", "videos/b.mp4": "b1"}
    after = current_as_of(iter(LEDGER), as_of=T0 + timedelta(minutes=30), prefix="videos/")
    assert {k: e.source_version_id for k, e in after.items()} == {"videos/a.mp4": "a2", "videos/c.mp4": "c1"}
    assert current_as_of(iter(LEDGER), as_of=T0 - timedelta(seconds=1), prefix="videos/") == {}


def test_a_delete_and_a_new_version_in_the_same_second_keep_the_version() -> None:
    same = [_entry("version", "videos/x.mp4", 0, "x1"), _entry("delete", "videos/x.mp4", 3, "x-del"),
            _entry("version", "videos/x.mp4", 3, "x2")]
    assert current_as_of(iter(same), as_of=T0 + timedelta(minutes=3), prefix="")["videos/x.mp4"].source_version_id == "x2"


def test_lifecycle_rules_come_from_the_policys_retention() -> None:
    objects = load_policy().objects
    video = lifecycle_rule(objects.categories["video_content"], "video_content", "videos/")
    assert video["Transitions"] == [{"Days": 90, "StorageClass": "DEEP_ARCHIVE"}]
    assert video["Expiration"] == {"Days": 2555} and video["NoncurrentVersionExpiration"] == {"NoncurrentDays": 2555}
    uploads = lifecycle_rule(objects.categories["user_uploads"], "user_uploads", "uploads/")
    assert "Expiration" not in uploads and "Transitions" not in uploads, "uploads are kept indefinitely"
    assert uploads["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


def test_the_stale_alarm_reads_the_checkpoints() -> None:
    policy = load_policy()
    now = T0 + timedelta(hours=5)
    fresh = Checkpoint(category="video_content", complete_at=now - timedelta(minutes=20))
    old = Checkpoint(category="user_uploads", complete_at=now - timedelta(hours=2))
    alarms = stale_object_categories(policy, {"video_content": fresh, "user_uploads": old}, now=now)
    assert alarms == ["object category user_uploads: the last complete replication started 2h ago, over its RPO "
                      "maximum of 1h"]
    assert stale_object_categories(policy, {}, now=now)[0].startswith("object category video_content: never replicated")


def _current(key: str, etag: str = "e", size: int = 1) -> CurrentObject:
    return CurrentObject(key, T0.isoformat(), etag, size)


def test_two_listings_compared_name_what_is_new_changed_and_gone() -> None:
    before = [_current("a"), _current("b"), _current("c"), _current("e")]
    after = [_current("a"), _current("b", etag="other"), _current("d"), _current("e"), _current("f")]
    assert [(kind, entry.key) for kind, entry in compare_current(before, after)] == [
        ("changed", "b"), ("gone", "c"), ("new", "d"), ("new", "f")]
    assert list(compare_current([], [])) == [] and [k for k, _ in compare_current(before, [])] == ["gone"] * 4


def test_a_listing_kept_on_disk_reads_back_and_names_a_key_out_of_order() -> None:
    listing = CurrentListing("video_content", listed_at=T0)
    entries = [_current(f"videos/{i:04d}.mp4", size=i) for i in range(2500)]
    for entry in entries:
        listing.add(entry)
    assert list(listing) == entries and listing.unusable is None and listing.objects == 2500
    listing.close()
    disordered = CurrentListing("video_content", listed_at=T0)
    disordered.add(_current("videos/b"))
    disordered.add(_current("videos/a"))
    assert disordered.unusable == "'videos/a' came after 'videos/b': the listing is not in key order"
    disordered.close()
