"""The communication section of the policy and the templates: strict rendering, severity routing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from continuity.incidents.communication import TemplateError, render, required_fields
from continuity.policy.model import PolicyError
from continuity.policy.loading import load_policy
from continuity.policy.project import default_policy_path

POLICY = load_policy()
FIELDS = {
    "incident_id": "INC-2026-0042", "severity": "critical", "start_time": "2026-11-27 08:00 UTC",
    "affected_services": ["Video Upload", "User Authentication"], "current_status": "failing over to us-west-2",
    "estimated_recovery": "08:21 UTC (last drill: RTO 1243 s)", "actions_taken": "dr_failover triggered",
    "incident_commander": "Ada Lovelace", "communication_channel": "#incidents-critical",
    "next_update_time": "08:30 UTC", "issue_description": "the primary database is unreachable",
    "affected_features": ["video upload", "login"], "status_page_url": "http://localhost:8080/continuity/status",
    "update_interval": "30 minutes", "resolution_time": "08:19 UTC", "root_cause": "a lost availability zone",
    "services_affected": ["Video Upload"], "total_duration": "19 minutes", "report_due": "48 hours",
    "report_url": "http://localhost:8080/continuity/reports/INC-2026-0042", "title": "Database failover",
    "statement": "We are restoring service.", "status": "investigating", "updated_at": "08:05 UTC",
    "message": "The database is failing over.", "functions": {"video_upload": "down", "reporting_analytics": "up"},
    "data_loss": "0 bytes (switchover)", "cost": "$2,667 (20 minutes at $8,000/h)",
    "unavailability": [{"function": "video_upload", "duration": "19 minutes", "source": "audit manual__1"}],
    "timeline": [{"at": "08:00", "what": "primary stopped answering"}], "lessons_learned": "none yet",
    "action_items": ["add a second entry point"],
}


@pytest.mark.parametrize("name", sorted(POLICY.communication.templates))
def test_every_template_renders_with_its_fields(name: str) -> None:
    text = render(POLICY, name, FIELDS)
    assert "INC-2026-0042" in text or name in ("public_statement",)
    assert required_fields(POLICY, name) <= set(FIELDS) | {"test"}


def test_the_requirements_three_templates_carry_their_fields() -> None:
    alert = render(POLICY, "internal_alert", FIELDS)
    assert "Severity: critical" in alert and "Affected Services: Video Upload, User Authentication" in alert
    assert "Incident Commander: Ada Lovelace" in alert and "TEST" not in alert
    assert "(TEST, no action needed)" in render(POLICY, "internal_alert", {**FIELDS, "test": True})
    notice = render(POLICY, "customer_notification", FIELDS)
    assert notice.startswith("Subject: Service Disruption Notification - INC-2026-0042")
    assert "fully restored by 08:21 UTC (last drill: RTO 1243 s)" in notice
    recovery = render(POLICY, "recovery_announcement", FIELDS)
    assert "Root Cause: a lost availability zone" in recovery and "within 48 hours at http://" in recovery


def test_a_missing_field_is_named_with_the_template_before_anything_is_sent() -> None:
    fields = {k: v for k, v in FIELDS.items() if k not in ("incident_commander", "next_update_time")}
    with pytest.raises(TemplateError, match=r"template internal_alert \(internal_alert.txt.j2\): missing fields "
                                            r"incident_commander, next_update_time; nothing was sent"):
        render(POLICY, "internal_alert", fields)
    with pytest.raises(TemplateError, match="no template 'tweet'"):
        render(POLICY, "tweet", FIELDS)


def test_severity_decides_which_stakeholder_groups_are_told() -> None:
    communication = POLICY.communication
    assert communication.groups_for("critical") == ["executive", "customers", "partners"]
    assert communication.groups_for("high") == ["executive", "customers", "partners"]
    assert communication.groups_for("medium") == ["customers"]
    assert communication.groups_for("low") == []
    assert communication.stakeholder_groups["executive"].escalation == timedelta(minutes=30)
    assert communication.stakeholder_groups["partners"].escalation == timedelta(hours=2)
    assert communication.audiences["immediate_team"].deadline == timedelta(minutes=5)
    assert communication.audiences["public"].approval == "ceo" and communication.audiences["public"].deadline is None
    assert communication.update_interval == timedelta(minutes=30)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("    executive: {audience: management,", "    executive: {audience: board,",
     "communication.stakeholder_groups.executive.audience: expected one of"),
    ("      approval: approver\n      external: true\n    partners", "      approval: none\n      external: true\n    partners",
     "communication.audiences.customers.approval: an external audience needs approval"),
    ("    customers: {audience: customers, threshold: medium,", "    customers: {audience: customers, threshold: urgent,",
     "communication.stakeholder_groups.customers.threshold: input should be 'low', 'medium', 'high' or 'critical'"),
])
def test_a_broken_communication_section_names_the_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = default_policy_path().read_text()
    assert old in text, old
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_policy(path)
