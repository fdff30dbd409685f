"""The health monitor's view of degraded backups (#30 item 1): a required location missing backups is a
warning while the policy's storage.max_degraded has not passed, and a critical alarm after it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from continuity.health.checks import assess, check_degraded
from continuity.incidents.health_alerts import alert_requests
from continuity.policy.loading import load_policy
from continuity.storage.degraded import DegradedCopy

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=timezone.utc)


def _owed(missing: str, *ages_minutes: int, kind: str = "wal") -> list[DegradedCopy]:
    return [DegradedCopy(backup_id=f"wal-00000001000000000000000{i}", kind=kind, missing=missing,
                         reason="location primary: head failed: EndpointConnectionError", since=NOW - timedelta(minutes=age))
            for i, age in enumerate(ages_minutes)]


def _by_subject(checks):
    return {c.subject: c for c in checks}


def test_nothing_owed_is_healthy_for_every_required_location_and_optional_ones_are_not_checked() -> None:
    policy = load_policy()
    checks = _by_subject(check_degraded(policy, [], {}, now=NOW))
    assert set(checks) == {f"degraded backups of {name}" for name in policy.storage.required()}
    assert all(c.healthy for c in checks.values())


def test_owed_backups_within_the_bound_are_a_warning_at_the_storage_components_severity() -> None:
    policy = load_policy()
    check = _by_subject(check_degraded(policy, _owed("primary", 30, 5), {}, now=NOW))["degraded backups of primary"]
    assert not check.healthy and check.alert is None and check.component == "storage"
    assert "missing 2 wal backups since 30m ago" in check.reason and check.details["owed"] == 2
    [request] = alert_requests(policy, assess(policy, [check]), source="test")
    assert request.severity == policy.health_monitor.alerts["storage"]


def test_owed_backups_past_the_bound_are_a_critical_alarm_naming_the_bound_and_what_to_do() -> None:
    policy = load_policy()
    bound = policy.storage.max_degraded
    minutes = int(bound.total_seconds() // 60) + 5
    check = _by_subject(check_degraded(policy, _owed("primary", minutes), {}, now=NOW))["degraded backups of primary"]
    assert not check.healthy and check.alert == "critical"
    assert "over storage.max_degraded" in check.reason and "HINT" in check.reason
    [request] = alert_requests(policy, assess(policy, [check]), source="test")
    assert request.severity == "critical"
