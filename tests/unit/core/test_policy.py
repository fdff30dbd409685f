from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from continuity.policy.project import default_policy_path
from continuity.policy.model import PolicyError, parse_duration, parse_size
from continuity.policy.loading import load_policy

SEED = default_policy_path().read_text()


def test_seed_numbers_from_the_requirements() -> None:
    policy = load_policy()
    auth = policy.business_functions["user_authentication"]
    assert auth.criticality == "critical"
    assert auth.rto.target == timedelta(minutes=15)
    assert auth.rpo.target == timedelta(minutes=5)
    assert policy.tiers["tier_1_critical"].target == timedelta(minutes=15)
    assert policy.tiers["tier_1_critical"].maximum == timedelta(minutes=30)
    assert policy.data_categories["video_content"].rpo.target == timedelta(minutes=15)
    assert policy.data_categories["video_content"].rpo.maximum == timedelta(hours=1)
    assert policy.backups.full.retention == {"primary_region": timedelta(days=30), "offsite": timedelta(days=365)}
    assert policy.backups.incremental.retention["primary_region"] == timedelta(days=7)
    assert policy.backups.point_in_time_recovery.window == timedelta(days=30)
    assert policy.health_monitor.max_lag_bytes == 16 * 2**20
    assert policy.health_monitor.weights == {"database": 3, "application": 2, "network": 2, "storage": 1}
    assert policy.health_monitor.disaster_threshold == 3
    assert policy.validation.monthly == ["full_restore_test", "disaster_recovery_drill"]


def test_topology_and_storage() -> None:
    policy = load_policy()
    assert policy.topology.primary.name == "primary"
    assert [(n.name, n.synchronous, n.region) for n in policy.topology.standbys] == [
        ("sync1", True, "us-east-1"), ("sync2", True, "us-east-1"), ("dr", False, "us-west-2"),
    ]
    assert policy.topology.synchronous_quorum == 1
    assert {loc.region for loc in policy.storage.locations if loc.required} == {"us-east-1", "us-west-2"}
    assert set(policy.functions_depending_on("database")) >= {"user_authentication", "video_upload"}


@pytest.mark.parametrize(
    ("text", "size"),
    [("90s", timedelta(seconds=90)), ("15m", timedelta(minutes=15)), ("4h", timedelta(hours=4)),
     ("30d", timedelta(days=30)), ("1y", timedelta(days=365)), (" 2w ", timedelta(weeks=2))],
)
def test_durations(text: str, size: timedelta) -> None:
    assert parse_duration(text) == size


@pytest.mark.parametrize("text", ["soon", "15", "m15", "", "15 minutes", None, 15])
def test_bad_durations_say_what_was_expected(text: object) -> None:
    with pytest.raises(ValueError, match=r"expected a duration like '15m', got"):
        parse_duration(text)


def test_sizes() -> None:
    assert parse_size("16MiB") == 16 * 2**20
    assert parse_size("512kB") == 512_000
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError, match="expected a size like '16MiB', got 'lots'"):
        parse_size("lots")


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    assert old in SEED, old
    path = tmp_path / "policy.yaml"
    path.write_text(SEED.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    target: 15m\n    maximum: 30m\n    strategy: hot", "    target: soon\n    maximum: 30m\n    strategy: hot",
         "policy.yaml: tiers.tier_1_critical.target: expected a duration like '15m', got 'soon'"),
        ("backup_frequency: 15m", "backup_frequency: often",
         "policy.yaml: data_categories.video_content.backup_frequency: expected 'continuous' or a duration like '15m', got 'often'"),
        ("max_lag_bytes: 16MiB", "max_lag_bytes: lots",
         "policy.yaml: health_monitor.max_lag_bytes: expected a size like '16MiB', got 'lots'"),
        ("    tier: tier_1_critical", "    tier: tier_9",
         "policy.yaml: business_functions.user_authentication.tier: expected one of"),
        ("  weights:", "  wieghts:", "policy.yaml: health_monitor.wieghts: unknown key"),
        ("  weights:", "  wieghts:", "policy.yaml: health_monitor.weights: required key is missing"),
        ("    rto: {target: 15m, maximum: 30m}", "    rto: {target: 15m, maximum: 5m}",
         "policy.yaml: business_functions.user_authentication.rto.maximum: expected at least the target (15m), got 5m"),
        ("    rto: {target: 30m, maximum: 1h}", "    rto: {target: 30m, maximum: 2h}",
         "policy.yaml: business_functions.video_upload.rto.maximum: expected at most its tier tier_2_high's maximum "
         "(1h), got 2h"),
        ("      role: standby\n      synchronous: true", "      role: primary\n      synchronous: false",
         "policy.yaml: topology.nodes: expected exactly one node with role 'primary', got 2"),
        ("      region: us-west-2\n      bucket", "      region: us-east-1\n      bucket",
         "policy.yaml: storage.locations: expected a required location outside the primary region us-east-1"),
        ("    - name: primary\n      kind: s3", "    - name: primary\n      kind: tape",
         "policy.yaml: storage.locations[0].kind: input should be 's3' or 'file', got 'tape'"),
        ("version: 1", "version: 1\nbroken: [1", "policy.yaml: line"),
        ("  catch_up_timeout: 60s", "  catch_up_timeout: forever",
         "policy.yaml: failover.catch_up_timeout: expected a duration like '15m', got 'forever'"),
        ("  service_control: sandbox\n", "  service_control: ssh\n",
         "policy.yaml: application: service_control is 'ssh' but region(s) us-east-1, us-west-2 have no commands in "
         "application.ssh"),
        ("  service_control: sandbox\n", "  service_control: sandbox\n  ssh:\n    eu-west-1: {ssh_conn_id: x, start: a, stop: "
         "b, status: c, promote_cache: d, follow_cache: e}\n",
         "policy.yaml: application: application.ssh names region(s) eu-west-1 that application.regions does not have"),
        ("        - {region: us-west-2, bucket: app-videos-us-west-2,", "        - {region: us-east-1, bucket: app-videos-us-west-2,",
         "policy.yaml: objects.categories.video_content.replicas: expected a replica outside the source's region us-east-1"),
        ("      interval: 15m\n      retention: {standard", "      interval: 1h\n      retention: {standard",
         "policy.yaml: objects.categories.video_content.interval: expected at most the category's RPO target (15m), got 1h"),
        ("      retention: {standard: 90d, archive_class: DEEP_ARCHIVE, archive_until: 7y}",
         "      retention: {standard: 90d, archive_class: DEEP_ARCHIVE}",
         "policy.yaml: objects.categories.video_content.retention.archive_until: required with archive_class"),
        ("      retention: {indefinite: true}", "      retention: {}",
         "policy.yaml: objects.categories.user_uploads.retention: expected 'standard'"),
        ("      object_lock: {mode: GOVERNANCE, period: 7d}\n      database_reference",
         "      object_lock: {mode: FOREVER, period: 7d}\n      database_reference",
         "policy.yaml: objects.categories.video_content.object_lock.mode: input should be 'GOVERNANCE' or 'COMPLIANCE'"),
        ("database_reference: {database: app,", "database_reference: {database: videos,",
         "policy.yaml: objects.categories.video_content.database_reference.database: expected one of ['app']"),
        ("  every_version_listing: 1h", "  every_version_listing: 2h",
         "policy.yaml: objects.every_version_listing: expected at most the RPO maximum of video_content (1h): "
         "versions only that listing finds would be older, got 2h"),
        ("  user_uploads:\n    rpo", "  uploads_renamed:\n    rpo",
         "policy.yaml: objects.categories.user_uploads: expected one of the data_categories"),
        ("  node_control: sandbox", "  node_control: ssh",
         "policy.yaml: topology: node_control is 'ssh' but node(s) primary, sync1, sync2, dr have no host"),
        ("    - name: sync1\n      role: standby", "    - name: sync-1\n      role: standby",
         "policy.yaml: topology.nodes[1].name: expected a node name of lowercase letters, digits and '_' starting with "
         "a letter, at most 63 (it names the node's replication slot, which allows no '-' or capitals), got 'sync-1'"),
        ("      methods: [slack, email]\n", "      methods: [slack, sms]\n",
         "policy.yaml: communication.audiences.extended_team.methods[1]: input should be 'slack', 'pagerduty', 'email', "
         "'status_page' or 'in_app_banner', got 'sms'"),
        ("      recipients: {email: [partner1@example.com, partner2@example.com]}\n", "",
         "policy.yaml: communication.audiences.partners.methods: email has no recipients: expected addresses in "
         "communication.audiences.partners.recipients.email"),
        ("  banners:\n    - {region: us-east-1, bucket: app-uploads-us-east-1, prefix: app/, conn_id: continuity_s3_us_east_1}\n"
         "    - {region: us-west-2, bucket: app-uploads-us-west-2, prefix: app/, conn_id: continuity_s3_us_west_2}\n",
         "  banners: []\n",
         "policy.yaml: communication.audiences.customers.methods: in_app_banner has no sender: communication.banners "
         "names no bucket for the application's banner"),
        ("  node_control: sandbox", "  node_control: telnet",
         "policy.yaml: topology.node_control: input should be 'sandbox' or 'ssh'"),
        ("  control_region: us-west-2", "  control_region: us-east-1",
         "policy.yaml: deployment.control_region: expected a region other than the primary region (us-east-1)"),
        ("  control_region: us-west-2", "  control_region: mars-1",
         "policy.yaml: deployment.control_region: expected one of the policy's regions ['us-east-1', 'us-west-2', "
         "'eu-west-1'], got 'mars-1'"),
    ],
)
def test_broken_policy_names_file_key_and_expectation(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(_broken(tmp_path, old, new))
    assert message in str(caught.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "nope.yaml")


def test_policy_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _broken(tmp_path, "disaster_threshold: 3", "disaster_threshold: 5")
    monkeypatch.setenv("CONTINUITY_POLICY", str(path))
    assert load_policy().health_monitor.disaster_threshold == 5


def test_failover_limits_default_to_the_requirements_when_the_section_is_absent(tmp_path: Path) -> None:
    policy = load_policy()
    assert policy.failover.catch_up_timeout == timedelta(seconds=60)
    text = (Path(__file__).resolve().parents[3] / "include" / "policy.yaml").read_text()
    without = tmp_path / "policy.yaml"
    without.write_text(text[:text.index("# Section 3.2: dr_failover's limits")])
    assert load_policy(without).failover.pause_timeout == timedelta(seconds=10)
    # Production's default: a second person approves every manual failover; the sandbox policy turns it off.
    assert load_policy(without).failover.approval.required is True
    assert load_policy(without).failover.approval.timeout == timedelta(minutes=15)
    assert policy.failover.approval.required is False


def test_objects_section_carries_the_requirements_file_storage_plan() -> None:
    objects = load_policy().objects
    assert objects is not None and set(objects.categories) == {"video_content", "user_uploads"}
    video = objects.categories["video_content"]
    assert video.interval == timedelta(minutes=15) and video.retention.standard == timedelta(days=90)
    assert video.retention.archive_until == timedelta(days=7 * 365) and video.retention.archive_class == "DEEP_ARCHIVE"
    assert video.database_reference is not None and video.database_reference.key_column == "s3_key"
    assert objects.categories["user_uploads"].retention.indefinite is True
    assert all(c.object_lock is not None for c in objects.categories.values())


def test_restore_tests_rotate_over_every_location_and_alarm_when_one_is_overdue() -> None:
    from datetime import datetime, timedelta, timezone

    from continuity.exercises.sample_restore import locations_due, unproven_alarms

    policy = load_policy()
    now = datetime(2026, 11, 27, 5, 0, tzinfo=timezone.utc)
    week = timedelta(days=7)
    assert policy.restore_test_periods() == {"primary": timedelta(days=31), "dr": week, "archive": timedelta(days=31)}
    assert locations_due(policy, {}, now=now, run_interval=week) == ["dr", "primary", "archive"]
    proven = {"dr": now - week, "primary": now - timedelta(days=3), "archive": now - timedelta(days=26)}
    # The archive would pass its 31 days before the next weekly run: its turn is now; the primary's is not.
    assert locations_due(policy, proven, now=now, run_interval=week) == ["dr", "archive"]
    assert unproven_alarms(policy, proven, now=now) == []
    late = {**proven, "archive": now - timedelta(days=40)}
    [alarm] = unproven_alarms(policy, late, now=now)
    assert alarm.startswith("location archive has not been proven restorable within 31d (last: 2026-10-18")


def test_the_plan_review_is_overdue_after_a_year_and_counts_from_the_last_answer() -> None:
    from datetime import datetime, timezone

    from continuity.exercises.plan_review import ReviewDecision, last_review, overdue_alarm

    policy = load_policy()
    assert overdue_alarm(policy, [], now=datetime(2026, 11, 27, tzinfo=timezone.utc)) is None
    late = overdue_alarm(policy, [], now=datetime(2027, 2, 1, tzinfo=timezone.utc))
    assert late == ("the recovery plan has not been reviewed within 1y (last: 2026-01-15 by sre-lead@example.com): "
                    "run dr_plan_review")
    answered = ReviewDecision(review_id="r1", outcome="confirmed", decided_by="admin",
                              decided_at=datetime(2027, 1, 20, tzinfo=timezone.utc), changes={})
    unanswered = answered.model_copy(update={"outcome": "not answered", "decided_by": None,
                                             "decided_at": datetime(2027, 1, 25, tzinfo=timezone.utc)})
    assert last_review(policy, [answered, unanswered]) == (answered.decided_at, "admin")
    assert overdue_alarm(policy, [answered, unanswered], now=datetime(2027, 2, 1, tzinfo=timezone.utc)) is None


def test_an_overlay_sets_a_deployments_own_settings_without_a_copy_of_the_policy(tmp_path: Path, monkeypatch) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("topology:\n  node_control: ssh\n  nodes:\n"
                       "    - {name: dr, host: {ssh_conn_id: ssh_dr, address: pg-dr, data_directory: /data}}\n"
                       "failover: {approval: {required: true}}\n")
    monkeypatch.setenv("CONTINUITY_POLICY_OVERLAY", str(overlay))
    with pytest.raises(PolicyError, match=r"^policy.yaml \+ overlay.yaml: topology: node_control is 'ssh' but "
                                          r"node\(s\) primary, sync1, sync2 have no host"):
        load_policy()
    overlay.write_text(overlay.read_text().replace("    - {name: dr,", "    - {name: primary, host: {ssh_conn_id: a, "
                       "address: a, data_directory: /a}}\n    - {name: sync1, host: {ssh_conn_id: b, address: b, "
                       "data_directory: /b}}\n    - {name: sync2, host: {ssh_conn_id: c, address: c, "
                       "data_directory: /c}}\n    - {name: dr,"))
    policy = load_policy()
    dr = policy.topology.node("dr")
    assert (dr.host.address, dr.region, dr.role) == ("pg-dr", "us-west-2", "standby"), "the rest of the node stays"
    assert policy.failover.approval.required and policy.failover.catch_up_timeout == timedelta(seconds=60)
    overlay.write_text("topology:\n  nodes:\n    - {name: dr2, region: us-west-2}\n")
    with pytest.raises(PolicyError, match=r"^overlay: topology.nodes names dr2, which the policy does not have"):
        load_policy()


def test_the_required_locations_are_named_in_one_place() -> None:
    policy = load_policy()
    assert policy.storage.required() == {"primary", "dr"}
    assert {loc.name for loc in policy.storage.locations} - policy.storage.required() == {"archive"}
