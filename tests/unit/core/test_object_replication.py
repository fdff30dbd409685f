"""Object replication on S3 (moto in-process: the same request handling as the higher tiers' endpoint, without a
socket): every version copied once and verified, overwrites and deletes kept, a mass delete alarmed, replica
protection applied and its drift reported, restores as of a time, inventory and repair, runs killed midway,
consistency with the database's references. Each test has buckets of its own (tests/support/objects_world.py).
A connection cut mid-copy needs a real endpoint: tests/component/test_object_replication_faults.py; the DAG on the
sandbox's application buckets: tests/integration/test_object_replication.py."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import boto3
import pytest

from continuity.objects import replication as objects  # its LOOKBACK is patched
from continuity.objects.listing import current_listing_key
from continuity.objects.copying import copy_streamed
from continuity.objects.audit import check_consistency, inventory
from continuity.objects.ledger import load_checkpoint, save_checkpoint
from continuity.objects.store import (CHECKPOINT_EVERY, HEARTBEAT_NAME, METADATA_SOURCE_VERSION, ObjectStore,
                                      list_versions)
from continuity.policy.loading import load_policy
from continuity.storage.keys import Keyring

from tests.support.objects_world import PART, World, blob as _blob


@pytest.fixture
def s3_client(monkeypatch: pytest.MonkeyPatch):
    """moto in-process, every region's client on one endpoint (so server-side copies are possible, as on the
    sandbox's endpoint and within one AWS partition), the state locations' buckets made."""
    from moto import mock_aws

    with mock_aws():
        clients = {}

        def client(region: str):
            if region not in clients:
                clients[region] = boto3.client("s3", region_name=region, endpoint_url="https://s3.amazonaws.com",
                                               aws_access_key_id="unit", aws_secret_access_key="unit")
            return clients[region]

        for location in load_policy().storage.locations:
            config = {} if location.region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": location.region}}
            client(location.region).create_bucket(Bucket=location.bucket, **config)
        yield client


@pytest.fixture
def world(s3_client, tmp_path: Path) -> World:
    return World(s3_client, tmp_path)


def test_the_first_run_copies_every_version_verified_and_the_next_only_what_is_new(world: World) -> None:
    contents = {f"videos/{i:03d}.mp4": _blob(1000 + i * 7919, f"v{i}") for i in range(12)}
    contents["videos/large.mp4"] = _blob(2 * PART + 12345, "large")  # three parts
    for key, data in contents.items():
        world.put(key, data)
    first = world.run("first")
    assert first.copied == len(contents) and not first.failed and first.alarms == []
    assert first.methods == {"streamed": len(contents)}, "object-locked replicas take streamed copies"
    for key, data in contents.items():
        assert world.replica_sha(key) == hashlib.sha256(data).hexdigest(), key
    recorded = {line["key"]: line["sha256"] for line in world.ledger() if line["event"] == "version"}
    assert recorded == {key: hashlib.sha256(data).hexdigest() for key, data in contents.items()}
    assert first.lag_seconds is None and first.lag_source.startswith("not measured")

    world.put("videos/new.mp4", b"a new video")
    second = world.run("second")
    # the new object and the first run's heartbeat, nothing else
    assert second.copied == 2 and second.skipped == 0
    assert world.replica_sha("videos/new.mp4") == hashlib.sha256(b"a new video").hexdigest()
    assert second.lag_seconds is not None and second.lag_seconds >= 0
    assert "heartbeat videos/.continuity-heartbeat written at the source" in second.lag_source
    assert any("replication lag" in line and "within the RPO target (15m / 1h)" in line for line in world.log)


def test_an_overwrite_keeps_both_versions_and_a_delete_keeps_the_copy(world: World) -> None:
    old = world.put("videos/a.mp4", b"first cut")
    world.put("videos/b.mp4", b"to be deleted")
    world.run("one")
    new = world.put("videos/a.mp4", b"second cut")
    world.src.delete_object(Bucket=world.source_bucket, Key="videos/b.mp4")
    run = world.run("two")
    assert run.deletes == ["videos/b.mp4"] and run.alarms == []
    versions = world.replica_versions("videos/a.mp4")
    sources = {world.rep.head_object(Bucket=world.replica_bucket, Key="videos/a.mp4", VersionId=v["VersionId"])
               ["Metadata"][METADATA_SOURCE_VERSION] for v in versions}
    assert sources == {old, new}, "both versions of the overwritten object are in the replica"
    assert world.rep.get_object(Bucket=world.replica_bucket, Key="videos/b.mp4")["Body"].read() == b"to be deleted"
    deletes = [line for line in world.ledger() if line["event"] == "delete"]
    assert [d["key"] for d in deletes] == ["videos/b.mp4"]


def test_a_mass_delete_is_an_alarm_naming_count_and_prefix_and_deletes_nothing(s3_client, tmp_path: Path) -> None:
    world = World(s3_client, tmp_path, max_deletes=3)
    for i in range(6):
        world.put(f"videos/{i}.mp4", f"video {i}".encode())
    world.run("before")
    for i in range(5):
        world.src.delete_object(Bucket=world.source_bucket, Key=f"videos/{i}.mp4")
    run = world.run("after")
    assert run.alarms == [f"ALARM mass delete: 5 objects deleted under s3://{world.source_bucket}/videos/ since the "
                          f"last run (threshold 3); the replicas keep every version and nothing was deleted there"]
    for i in range(6):
        assert world.rep.get_object(Bucket=world.replica_bucket, Key=f"videos/{i}.mp4")["Body"].read() == \
            f"video {i}".encode()


def test_a_version_written_while_the_run_copies_is_copied_in_the_same_run(world: World) -> None:
    world.put("videos/busy.mp4", b"version one")
    real = world.src

    class WritesDuringTheCopy:
        """The source's real client; the first read of busy.mp4 lets the application write it again."""

        def __init__(self) -> None:
            self.written = False

        def __getattr__(self, name):
            return getattr(real, name)

        def get_object(self, **kwargs):
            response = real.get_object(**kwargs)
            if kwargs["Key"] == "videos/busy.mp4" and not self.written:
                self.written = True
                real.put_object(Bucket=world.source_bucket, Key="videos/busy.mp4", Body=b"version two")
            return response

    run = world.run("busy", continuity_s3_us_east_1=WritesDuringTheCopy())
    assert len(run.changed_during_run) == 1 and run.changed_during_run[0].startswith("videos/busy.mp4")
    bodies = {world.rep.get_object(Bucket=world.replica_bucket, Key="videos/busy.mp4",
                                   VersionId=v["VersionId"])["Body"].read() for v in world.replica_versions("videos/busy.mp4")}
    assert bodies == {b"version one", b"version two"}


def test_replica_protection_is_applied_once_then_drift_is_an_alarm(world: World) -> None:
    world.put("videos/x.mp4", b"x")
    first = world.run("protect")
    assert first.protection == [f"{world.replica_bucket}: protection applied from the policy and verified"]
    lock = world.rep.get_object_lock_configuration(Bucket=world.replica_bucket)["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "GOVERNANCE" and lock["Rule"]["DefaultRetention"]["Days"] == 7
    [rule] = world.rep.get_bucket_lifecycle_configuration(Bucket=world.replica_bucket)["Rules"]
    assert rule["Transitions"] == [{"Days": 90, "StorageClass": "DEEP_ARCHIVE"}] and rule["Expiration"]["Days"] == 2555
    head = world.rep.head_object(Bucket=world.replica_bucket, Key="videos/x.mp4")
    assert head.get("ObjectLockMode") == "GOVERNANCE", "copies made after the setup are locked"
    with pytest.raises(Exception, match="AccessDenied"):
        world.rep.delete_object(Bucket=world.replica_bucket, Key="videos/x.mp4", VersionId=head["VersionId"])

    world.rep.put_bucket_lifecycle_configuration(Bucket=world.replica_bucket, LifecycleConfiguration={"Rules": [
        {**rule, "Expiration": {"Days": 30}}]})
    drift = world.run("drift")
    assert [a for a in drift.alarms if "lifecycle" in a] == [
        f"ALARM {world.replica_bucket}: lifecycle rule continuity-video_content differs from the policy in "
        f"Expiration (bucket: Expiration={{'Days': 30}})"]
    assert world.rep.get_bucket_lifecycle_configuration(Bucket=world.replica_bucket)["Rules"][0]["Expiration"] == \
        {"Days": 30}, "drift is reported, never silently overwritten"


def test_a_replica_without_object_lock_is_reported(s3_client, tmp_path: Path) -> None:
    world = World(s3_client, tmp_path)
    world.rep.delete_bucket(Bucket=world.replica_bucket)
    world.rep.create_bucket(Bucket=world.replica_bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    world.rep.put_bucket_versioning(Bucket=world.replica_bucket, VersioningConfiguration={"Status": "Enabled"})
    world.rep.put_object(Bucket=world.replica_bucket, Key="videos/already-there.mp4", Body=b"old")
    world.put("videos/y.mp4", b"y")
    run = world.run("unlocked")
    assert any(a.startswith(f"ALARM {world.replica_bucket}: object lock is not enabled on the bucket") or
               "could not set the object lock default retention" in a for a in run.alarms), run.alarms
    assert run.copied >= 1, "an alarm on protection does not stop the copies"


def test_an_unlocked_replica_on_the_same_endpoint_takes_server_side_copies(s3_client, tmp_path: Path) -> None:
    world = World(s3_client, tmp_path, locked=False)
    data = _blob(70_000, "server-side")
    world.put("videos/s.mp4", data)
    run = world.run("server-side")
    assert run.methods == {"server-side": 1} and not run.failed
    [line] = [line for line in world.ledger() if line["key"] == "videos/s.mp4"]
    assert line["sha256"] == hashlib.sha256(data).hexdigest() and line["method"] == "server-side"


def test_the_heartbeat_is_the_sources_and_listing_sees_every_version(world: World) -> None:
    world.put("videos/h.mp4", b"h")
    world.run("one")
    keys = {v.key for v in list_versions(ObjectStore(client=world.src, bucket=world.source_bucket,
                                                             prefix="videos/", region="us-east-1"), since=None)}
    assert keys == {"videos/h.mp4", f"videos/{HEARTBEAT_NAME}"}


def _cli(world: World, tmp_path: Path, *args: str, capsys) -> tuple[int, str, str]:
    from continuity.cli import main

    key_file = tmp_path / "keyring.json"
    if not key_file.exists():
        Keyring(keys={"kek-unit": bytes(32)}, active="kek-unit").save(key_file)
    code = main(["--policy", str(world.policy_path), "objects", *args, "--key-file", str(key_file)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_restore_as_of_brings_back_what_an_overwrite_and_a_delete_took(world: World, tmp_path: Path, capsys) -> None:
    import time
    from datetime import datetime, timezone

    world.put("videos/a.mp4", b"the real video")
    world.put("videos/b.mp4", b"another video")
    world.put("videos/large.mp4", big := _blob(PART + 4321, "large-restore"))
    world.run("before")
    time.sleep(1.1)  # S3 times have a resolution of a second
    before_the_attack = datetime.now(timezone.utc)
    time.sleep(1.1)
    world.put("videos/a.mp4", b"ENCRYPTED BY RANSOMWARE")
    world.src.delete_object(Bucket=world.source_bucket, Key="videos/b.mp4")
    world.run("after")

    restored = tmp_path / "restored"
    code, out, _ = _cli(world, tmp_path, "restore", "--category", "video_content", "--as-of",
                        before_the_attack.isoformat(), "--to", str(restored), capsys=capsys)
    assert code == 0, out
    assert (restored / "videos/a.mp4").read_bytes() == b"the real video"
    assert (restored / "videos/b.mp4").read_bytes() == b"another video", "the deleted object is back"
    assert (restored / "videos/large.mp4").read_bytes() == big
    assert not list(restored.rglob(".*partial")), "no partial file is left"
    assert not (restored / "videos" / HEARTBEAT_NAME).exists(), "Continuity's own objects stay out"

    now = tmp_path / "now"
    code, _, _ = _cli(world, tmp_path, "restore", "--category", "video_content", "--as-of",
                      datetime.now(timezone.utc).isoformat(), "--to", str(now), capsys=capsys)
    assert code == 0 and (now / "videos/a.mp4").read_bytes() == b"ENCRYPTED BY RANSOMWARE"
    assert not (now / "videos/b.mp4").exists(), "deleted by then: not restored"

    code, out, _ = _cli(world, tmp_path, "restore", "--category", "video_content", "--as-of",
                        before_the_attack.isoformat(), "--to", f"s3://{world.source_bucket}", capsys=capsys)
    assert code == 0, out
    assert world.src.get_object(Bucket=world.source_bucket, Key="videos/a.mp4")["Body"].read() == b"the real video"
    assert world.src.get_object(Bucket=world.source_bucket, Key="videos/b.mp4")["Body"].read() == b"another video"


def test_restore_refuses_bad_input_before_doing_anything(world: World, tmp_path: Path, capsys) -> None:
    from continuity.cli import EXIT_USAGE

    code, _, err = _cli(world, tmp_path, "restore", "--category", "video_content", "--as-of", "yesterday-ish",
                        "--to", str(tmp_path / "x"), capsys=capsys)
    assert code == EXIT_USAGE and "--as-of 'yesterday-ish': expected an ISO 8601 time" in err
    code, _, err = _cli(world, tmp_path, "restore", "--category", "video_content", "--as-of", "2026-01-01T00:00:00Z",
                        "--to", f"s3://{world.replica_bucket}", capsys=capsys)
    assert code == EXIT_USAGE and "that is a replica" in err
    code, _, err = _cli(world, tmp_path, "restore", "--category", "films", "--as-of", "2026-01-01T00:00:00Z",
                        "--to", str(tmp_path / "y"), capsys=capsys)
    assert code == EXIT_USAGE and "no object category 'films'" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_verify_names_what_is_missing_and_the_inventory_repairs_it(world: World, tmp_path: Path, capsys) -> None:
    world.put("videos/c.mp4", b"copied")
    world.run("one")
    world.put("videos/late.mp4", b"written after the run")
    code, out, _ = _cli(world, tmp_path, "verify", "--category", "video_content", "--deep", "5", "--json",
                        capsys=capsys)
    [found] = json.loads(out)
    assert code == 5 and [m.split(" ")[0] for m in found["missing"]] == ["videos/late.mp4"]
    assert found["source_objects"] == 2 and found["different"] == [] and found["deep_verified"] == 1

    [repaired] = inventory(world.replicator(), deep_sample=2, seed="t", repair=True)
    assert [r.split(" ")[0] for r in repaired.repaired] == ["videos/late.mp4"]
    code, out, _ = _cli(world, tmp_path, "verify", "--category", "video_content", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)[0]["missing"] == []


def test_a_run_that_died_midway_is_resumed_without_copying_twice(world: World) -> None:
    from datetime import datetime, timezone

    world.put("videos/first.mp4", b"first")
    world.run("one")
    world.put("videos/n1.mp4", b"copied before the crash")
    world.put("videos/n2.mp4", b"not copied yet")
    replicator = world.replicator()
    [n1] = [v for v in list_versions(replicator.source, since=None) if v.key == "videos/n1.mp4"]
    [replica] = replicator.replicas.values()
    copy_streamed(replicator.source, replica, n1, part_size=PART)  # what the dead run managed
    checkpoint = load_checkpoint("video_content", world.state)
    checkpoint.running_since = datetime.now(timezone.utc)  # it never got to say it finished
    save_checkpoint(checkpoint, world.state)

    resumed = world.run("resume")
    assert resumed.skipped == 1, "n1 was found in the replica, not copied again"
    ledger = {line["key"]: line for line in world.ledger() if line["event"] == "version"}
    assert ledger["videos/n1.mp4"]["sha256"] == hashlib.sha256(b"copied before the crash").hexdigest(), \
        "the copy the dead run made is in the ledger now, so a restore finds it"
    assert "videos/n2.mp4" in ledger
    assert len(world.replica_versions("videos/n1.mp4")) == 1 and len(world.replica_versions("videos/n2.mp4")) == 1
    assert load_checkpoint("video_content", world.state).running_since is None


def test_a_lag_past_the_rpo_maximum_is_an_alarm(world: World) -> None:
    from datetime import datetime, timedelta, timezone

    world.put("videos/l.mp4", b"l")
    two_hours_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    category = world.policy.data_categories["video_content"]
    # The previous run wrote its heartbeat two hours ago (a scheduler that was down since).
    world.replicator().run(run_id="long-ago", now=lambda: two_hours_ago)
    late = world.run("late")
    assert late.lag_seconds is not None and late.lag_seconds > 7000
    assert [a for a in late.alarms if "replication lag" in a][0].startswith(
        f"ALARM replication lag of video_content is {late.lag_seconds:.0f}s, past the RPO maximum "
        f"{category.rpo.maximum.seconds // 3600}h")


def test_consistency_tells_missing_from_pending_and_from_written_in_the_replicas_region(world: World) -> None:
    from datetime import datetime, timedelta, timezone

    copied = _blob(2048, "consistency-copied")
    world.put("videos/consistency-copied.mp4", copied)
    world.run("consistency")
    direct = b"written by the DR application after a failover"
    world.rep.put_object(Bucket=world.replica_bucket, Key="videos/consistency-direct.mp4", Body=direct)
    long_ago, later = datetime(2020, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc) + timedelta(hours=1)
    rows = [("videos/consistency-copied.mp4", len(copied), hashlib.sha256(copied).hexdigest(), long_ago),
            ("videos/consistency-lost.mp4", 10, None, long_ago),  # older than the newest copy: lost
            ("videos/consistency-new.mp4", 10, None, later),  # newer than everything copied: not yet due
            ("videos/consistency-direct.mp4", len(direct), None, later)]
    replica = ObjectStore(client=world.rep, bucket=world.replica_bucket, prefix="videos/", region="us-west-2")
    check = check_consistency(rows, replica=replica, category="video_content", prefix="videos/",
                                      database="test", as_of=datetime.now(timezone.utc), report=world.log.append)
    assert check.missing == ["videos/consistency-lost.mp4"] and not check.consistent
    assert check.pending == ["videos/consistency-new.mp4"]
    assert check.present == 2 and check.written_in_region == 1
    assert "1 written in us-west-2 directly" in world.log[-1] and "not yet due" in world.log[-1]


def test_runs_between_listings_of_every_version_compare_the_current_objects(world: World) -> None:
    """A run compares the current objects with the previous run's listing: a new key and an overwrite are one
    HEAD each, a delete is the source's own delete marker; a version overwritten again before the next run
    is found by the next listing of every version (hourly), so the replica ends with every version."""
    world.put("videos/keep.mp4", b"kept")
    first = world.put("videos/edit.mp4", b"cut one")
    world.put("videos/gone.mp4", b"to be deleted")
    assert world.run("full").listing == "every version (no listing of every version recorded yet)"

    middle = world.put("videos/edit.mp4", b"cut two")  # overwritten twice between two runs
    last = world.put("videos/edit.mp4", b"cut three")
    world.put("videos/new.mp4", b"new")
    marker = world.src.delete_object(Bucket=world.source_bucket, Key="videos/gone.mp4")["VersionId"]
    compared = world.run("compared")
    assert compared.listing.startswith("current objects compared with the listing of ")
    assert compared.listing.endswith(": 4 keys new, changed or gone"), "edit, gone, new and the heartbeat"
    assert compared.deletes == ["videos/gone.mp4"] and compared.copied == 3 and not compared.failed
    [delete] = [line for line in world.ledger() if line["event"] == "delete"]
    assert delete["source_version_id"] == marker, "the delete marker the source holds, found by a HEAD"
    sources = lambda: {world.rep.head_object(Bucket=world.replica_bucket, Key="videos/edit.mp4",  # noqa: E731
                                             VersionId=v["VersionId"])["Metadata"][METADATA_SOURCE_VERSION]
                       for v in world.replica_versions("videos/edit.mp4")}
    assert sources() == {first, last}, "the run between listings sees the current version only"

    hourly = world.run("hourly", every_version_listing=timedelta(0))
    assert hourly.listing.startswith("every version since ") and "every version is listed every 0s" in hourly.listing
    assert sources() == {first, middle, last} and hourly.copied == 2, "the middle version and the heartbeat"
    assert hourly.deletes == [], "the delete marker was recorded once, by the run that found the key gone"
    quiet = world.run("quiet")
    assert quiet.listing.endswith(": 1 keys new, changed or gone") and quiet.copied == 1, "the heartbeat alone"


def test_a_stored_listing_that_cannot_be_compared_with_makes_the_run_list_every_version(world: World) -> None:
    world.put("videos/s1.mp4", b"one")
    world.run("one")
    world.put("videos/s2.mp4", b"two")
    for location in world.state.values():  # damaged in every state location
        location.put_bytes(current_listing_key("video_content"), b"not gzip at all")
    run = world.run("two")
    assert run.listing.startswith("every version since ") and "the stored listing cannot be compared with" in run.listing
    assert world.replica_sha("videos/s2.mp4") == hashlib.sha256(b"two").hexdigest() and not run.failed
    assert world.run("three").listing.startswith("current objects compared"), "that run stored a good listing again"


class Killed(BaseException):
    """The worker process dying mid-run: nothing after it runs, no final checkpoint."""


def test_a_run_killed_while_listing_every_version_leaves_no_unlisted_version_behind(world: World, monkeypatch) -> None:
    """Copies start while the listing of every version still runs, in key order, not by age: a checkpoint saved
    meanwhile must not mark an older version, listed later, as done."""
    import time as clock

    monkeypatch.setattr(objects, "LOOKBACK", timedelta(0))  # the lookback would hide the mistake
    world.put("videos/z-oldest.mp4", b"written first, listed last")
    clock.sleep(1.1)  # Last-Modified has one-second resolution
    for i in range(CHECKPOINT_EVERY + 5):  # enough copies for a checkpoint save mid-run
        world.put(f"videos/a-{i:03d}.mp4", f"newer {i}".encode())
    real = world.src

    class DiesOnTheOldest:
        def __getattr__(self, name):
            return getattr(real, name)

        def get_object(self, **kwargs):
            if kwargs["Key"] == "videos/z-oldest.mp4":
                raise Killed()
            return real.get_object(**kwargs)

    with pytest.raises(Killed):
        world.run("killed", continuity_s3_us_east_1=DiesOnTheOldest())
    saved = load_checkpoint("video_content", world.state)
    assert saved.running_since is not None and len(saved.recent) >= CHECKPOINT_EVERY, "saved mid-run"
    resumed = world.run("resumed")
    assert world.replica_sha("videos/z-oldest.mp4") == hashlib.sha256(b"written first, listed last").hexdigest()
    assert not resumed.failed and resumed.listing.endswith("(the previous run did not finish)")


def test_fail_back_carries_home_only_what_the_recovery_region_wrote_and_twice_copies_nothing(world: World) -> None:
    """After serving from the replica's region, what the application wrote there goes home before home serves
    again; what replication put there is not copied back, and a second pass (after the switch) finds it home."""
    from continuity.objects.restore import fail_back

    world.put("videos/before.mp4", b"replicated before the disaster")
    world.run("before")
    replicator = world.replicator()
    [written] = replicator.replicas.values()
    written_there = {"videos/uploaded-in-dr.mp4": _blob(PART + 99, "dr"), "videos/small-in-dr.mp4": b"small"}
    for key, data in written_there.items():
        world.rep.put_object(Bucket=world.replica_bucket, Key=written.prefix + key, Body=data)
    said: list[str] = []

    first = fail_back(category="video_content", written=written, home=replicator.source, since=None,
                      part_size=PART, report=said.append)
    assert sorted(first.copied) == sorted(written.prefix + key for key in written_there) and not first.failed
    for key, data in written_there.items():
        home = world.src.get_object(Bucket=world.source_bucket, Key=replicator.source.prefix + key)["Body"].read()
        assert home == data, key
    assert "2 objects written in" in said[-1] and "copied home" in said[-1] and "0 failed" in said[-1]

    again = fail_back(category="video_content", written=written, home=replicator.source, since=None, part_size=PART,
                      report=said.append)
    assert again.copied == [] and again.already_home == 2
