"""A replication slot's WAL on the primary against the policy's bound (#30 item 8): the verdicts, the alert
they carry, the drift check of max_slot_wal_keep_size, and the incident requests an assessment makes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from continuity.health.checks import assess, check_configuration, slot_retention
from continuity.incidents.health_alerts import alert_requests
from continuity.policy.loading import load_policy
from continuity.policy.model import HealthMonitor
from continuity.postgres.node import ReplicationSlot

MIB = 2**20


def _policy(bound: int = 64 * MIB, ratio: float = 0.5):
    policy = load_policy()
    monitor = policy.health_monitor.model_copy(update={"max_slot_wal_keep": bound, "slot_wal_alert_ratio": ratio})
    return policy.model_copy(update={"health_monitor": monitor})


def _slot(retained: int | None, *, status: str = "reserved", active: bool = False, name: str = "dr") -> ReplicationSlot:
    return ReplicationSlot(slot_name=name, active=active, restart_lsn="0/3000000", retained_bytes=retained,
                           wal_status=status)


def test_a_slot_under_the_alert_level_is_healthy_and_says_both_limits() -> None:
    check = slot_retention(_policy(), "primary", _slot(10 * MIB), of_a_standby=True)
    assert check.healthy and check.alert is None
    assert check.reason == ("slot dr retains 10.0 MiB of WAL, under the 32.0 MiB alert level (50% of the 64.0 MiB "
                            "bound, max_slot_wal_keep_size)")


def test_a_slot_over_the_alert_level_fails_with_an_alert_before_the_bound() -> None:
    check = slot_retention(_policy(), "primary", _slot(40 * MIB), of_a_standby=True)
    assert not check.healthy and check.alert == "high"
    assert check.reason.startswith("slot dr retains 40.0 MiB of WAL, over the 32.0 MiB alert level")
    assert "standby dr is not connected that far behind" in check.reason
    assert check.details["retained_bytes"] == 40 * MIB and check.details["alert_at_bytes"] == 32 * MIB


@pytest.mark.parametrize(("status", "expected"), [
    ("unreserved", "past the 64.0 MiB bound (max_slot_wal_keep_size): the next checkpoint removes it"),
    ("lost", "slot dr lost its WAL past the 64.0 MiB bound"),
])
def test_a_slot_past_the_bound_says_the_standby_must_be_cloned_again(status: str, expected: str) -> None:
    check = slot_retention(_policy(), "primary", _slot(None if status == "lost" else 70 * MIB, status=status),
                           of_a_standby=True)
    assert not check.healthy and check.alert == "high"
    assert expected in check.reason and "cloned again" in check.reason


def test_a_leftover_slot_of_no_standby_is_named_as_such() -> None:
    check = slot_retention(_policy(), "primary", _slot(40 * MIB, name="old_dr"), of_a_standby=False)
    assert "slot old_dr (no standby of the policy: a leftover?)" in check.reason


class _Primary:
    """The two questions check_configuration asks, answered as a primary configured by hand would."""

    name = "primary"

    def __init__(self, *, bound: str, slots: list[ReplicationSlot]) -> None:
        self.bound, self.slots = bound, slots

    def settings(self, names: list[str]) -> dict[str, str]:
        values = {"wal_level": "replica", "archive_mode": "on", "data_checksums": "on", "max_wal_senders": "10",
                  "synchronous_standby_names": "ANY 1 (sync1, sync2)", "max_slot_wal_keep_size": self.bound}
        return {name: values[name] for name in names if name in values}

    def replication_slots(self) -> list[ReplicationSlot]:
        return self.slots


def test_an_unbounded_primary_is_configuration_drift_with_the_statement_to_fix_it() -> None:
    policy = _policy()
    slots = [_slot(MIB, active=True, name="sync1"), _slot(MIB, active=True, name="sync2"),
             _slot(MIB, active=True, name="dr")]
    checks = {c.subject: c for c in check_configuration(policy, _Primary(bound="-1", slots=slots))}
    drift = checks["configuration of primary: max_slot_wal_keep_size"]
    assert not drift.healthy
    assert drift.reason.startswith("max_slot_wal_keep_size is -1 (unlimited), the policy requires 64MB: a stopped "
                                   "standby's slot can fill the primary's disk")
    assert "HINT: ALTER SYSTEM SET max_slot_wal_keep_size = '64MB'" in drift.reason
    bounded = {c.subject: c for c in check_configuration(policy, _Primary(bound="64", slots=slots))}
    assert bounded["configuration of primary: max_slot_wal_keep_size"].healthy
    assert bounded["WAL retained on primary by slot dr"].healthy


def test_every_slot_is_weighed_even_one_no_standby_uses() -> None:
    slots = [_slot(MIB, active=True, name="sync1"), _slot(MIB, active=True, name="sync2"),
             _slot(MIB, active=True, name="dr"), _slot(50 * MIB, name="gone")]
    checks = {c.subject: c for c in check_configuration(_policy(), _Primary(bound="64", slots=slots))}
    assert not checks["WAL retained on primary by slot gone"].healthy


def test_a_filling_slot_is_a_high_incident_of_its_own_beside_the_low_drift_ones() -> None:
    policy = _policy()
    slots = [_slot(MIB, active=True, name="sync1"), _slot(MIB, active=True, name="sync2"), _slot(40 * MIB, name="dr")]
    assessment = assess(policy, check_configuration(policy, _Primary(bound="-1", slots=slots)))
    assert not assessment.disaster, "a filling slot is configuration (weight 0): never a failover"
    requests = {r.cause_key: r for r in alert_requests(policy, assessment, source="dr_health_monitor run r1")}
    assert {key: r.severity for key, r in requests.items()} == {
        "health:WAL retained on primary by slot dr": "high",  # the check's own alert
        "health:configuration of primary: max_slot_wal_keep_size": "low", "health:configuration of primary: slot dr": "low"}
    slot = requests["health:WAL retained on primary by slot dr"]
    assert slot.description.startswith("slot dr retains 40.0 MiB of WAL") and slot.source == "dr_health_monitor run r1"


@pytest.mark.parametrize(("bound", "ratio", "expected"), [
    ("16MiB", 0.5, "must be a whole number of MiB and at least 32MiB"),
    (64 * MIB + 1, 0.5, "must be a whole number of MiB"),
    ("64MiB", 1.0, "slot_wal_alert_ratio"),
])
def test_a_bound_postgresql_cannot_take_is_refused_at_load(bound: object, ratio: float, expected: str) -> None:
    fields = load_policy().health_monitor.model_dump()
    fields.update(max_slot_wal_keep=bound, slot_wal_alert_ratio=ratio)
    with pytest.raises(ValidationError, match=expected):
        HealthMonitor.model_validate(fields)
