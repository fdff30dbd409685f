"""What a failed step or a missed RTO leaves for dr_incident: one cause per failing step at its DAG's severity, and
never a failure of its own (a red run still shows the problem when the inbox cannot be written)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from continuity.alerts import callbacks
from continuity.incidents.records import pending_causes


class _Hook:
    """What report_cause uses of ContinuityIncidentHook: the policy's communication, the inbox's locations."""

    def __init__(self, locations: list[Any] | Exception, *, communication: object = object()) -> None:
        self.policy = SimpleNamespace(communication=communication)
        self._locations = locations

    def incident_locations(self) -> list[Any]:
        if isinstance(self._locations, Exception):
            raise self._locations
        return self._locations

    def get_journal(self) -> None:
        return None


def _failed(dag_id: str, exception: object) -> dict[str, Any]:
    return {"ti": SimpleNamespace(dag_id=dag_id, task_id="take_backup"), "run_id": "scheduled__2026-12-08",
            "exception": exception}


@pytest.mark.parametrize(("dag_id", "severity"), [("dr_full_backup", "high"), ("dr_wal_archive", "high"),
                                                  ("dr_restore_test", "medium"), ("dr_some_new_dag", "medium")])
def test_a_failed_step_is_one_cause_at_its_dags_severity_with_the_errors_first_line(monkeypatch, dag_id,
                                                                                     severity) -> None:
    reported = []
    monkeypatch.setattr(callbacks, "report_cause", lambda request, **_: reported.append(request) or True)
    callbacks.report_failed_task(_failed(dag_id, RuntimeError("bucket gone\nTraceback (most recent call last): ...")))
    [cause] = reported
    assert (cause.severity, cause.title) == (severity, f"{dag_id}: take_backup failed")
    assert cause.description == "run scheduled__2026-12-08: bucket gone"
    assert cause.key() == f"failed:{dag_id}:take_backup" and cause.source == f"{dag_id} run scheduled__2026-12-08"


def test_a_step_that_failed_without_an_exception_points_at_its_log(monkeypatch) -> None:
    reported = []
    monkeypatch.setattr(callbacks, "report_cause", lambda request, **_: reported.append(request) or True)
    callbacks.report_failed_task(_failed("dr_drill", None))
    assert reported[0].description == "run scheduled__2026-12-08: see the task log"


def test_the_cause_lands_in_the_inbox_of_every_location(moto_locations) -> None:
    from continuity.incidents.records import IncidentRequest

    request = IncidentRequest(severity="high", title="t", description="d", cause_key="failed:x:y", source="x run 1")
    regions = list(moto_locations.values())
    assert callbacks.report_cause(request, hook=_Hook(regions)) is True
    for location in regions:
        assert [cause.key() for _, cause in pending_causes([location])] == ["failed:x:y"]


def test_no_communication_in_the_policy_reports_nothing_and_an_unwritable_inbox_never_raises(caplog) -> None:
    from continuity.incidents.records import IncidentRequest

    request = IncidentRequest(severity="high", title="t", description="d", cause_key="failed:x:y", source="x run 1")
    assert callbacks.report_cause(request, hook=_Hook([], communication=None)) is False
    assert callbacks.report_cause(request, hook=_Hook(ConnectionError("every region down"))) is False
    assert "could not report the incident cause failed:x:y: every region down" in caplog.text
