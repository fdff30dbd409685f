"""Restore tests and drills are held to the RTO the policy promises: a Deadline Alert per DAG whose
callback raises the alert in the log and in storage while the run is still going."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from continuity.alerts.callbacks import ALERT_PREFIX, rto_deadline_missed
from continuity.policy.loading import load_policy

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.mark.parametrize("dag_id", ["dr_restore_test", "dr_drill"])
def test_restore_dags_alert_past_the_tightest_rto_target(dag_id: str) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.deadline import DeadlineAlert

    from tests.support.airflow_helpers import DAGS_DIR

    bag = DagBag(dag_folder=str(DAGS_DIR / f"{dag_id}.py"))
    alert = bag.get_dag(dag_id).deadline
    alert = alert[0] if isinstance(alert, list) else alert
    assert isinstance(alert, DeadlineAlert)
    tightest = min(f.rto.target for f in load_policy().functions_depending_on("database").values())
    assert alert.interval == tightest == timedelta(minutes=15)
    assert alert.callback.path == "continuity.alerts.callbacks.rto_deadline_missed"
    assert alert.callback.kwargs == {"dag_id": dag_id, "rto_target": "15m"}


def test_a_missed_deadline_is_logged_and_recorded_in_every_required_location(sandbox, caplog) -> None:
    run_id = "scheduled__2026-11-01T06:00:00+00:00"
    with caplog.at_level(logging.ERROR, logger="continuity.alerts.callbacks"):
        rto_deadline_missed(dag_id="dr_drill", rto_target="15m", context={"dag_run": {"dag_run_id": run_id}})
    assert "ALERT: dr_drill run scheduled__2026-11-01T06:00:00+00:00 is still running after its RTO target of 15m" \
        in caplog.text
    key = f"{ALERT_PREFIX}dr_drill-scheduled__2026-11-01T06_00_00_00_00.json"
    for name in ("primary", "dr"):
        record = json.loads(sandbox.storage_locations()[name].get_bytes(key))
        assert record["kind"] == "rto-deadline-missed" and record["run_id"] == run_id and record["rto_target"] == "15m"
