"""The backup operators under dag.test() against the sandbox: stream, verify, and a failing source."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from pathlib import Path

import pytest

from continuity.backup.engine import restore_copy
from continuity.storage.catalog import Catalog
from continuity.storage.locations import locations_from_policy

from tests.support.airflow_helpers import task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")
TEST_DAGS = Path(__file__).resolve().parent / "dags" / "test_backup_operators.py"


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(TEST_DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def test_stream_then_verify(sandbox) -> None:
    run = _dag("test_backup_operators").test()
    assert str(run.state) == "success", task_states(run)
    backup_id = xcom(run, "stream")
    results = xcom(run, "verify")
    assert {r["location"] for r in results} == {"primary", "dr", "archive"}
    assert all(r["ok"] and r["depth"] == "deep" for r in results)

    keyring = sandbox.keyring()
    locations = locations_from_policy(sandbox.policy, lambda loc: sandbox.s3_client(loc.region))
    manifest, _ = Catalog(locations, keyring).get(backup_id, location="dr")
    assert manifest.details == {"rows": 300000, "command": "seq", "exit_code": 0}
    out = io.BytesIO()
    restore_copy(manifest, locations["dr"], keyring, out)
    assert out.getvalue() == subprocess.run(["seq", "1", "300000"], capture_output=True, check=True).stdout

    exposed = json.dumps([backup_id, results])
    for key in keyring.keys.values():
        assert base64.b64encode(key).decode() not in exposed
    assert manifest.key["wrapped"] not in exposed


def test_failing_command_leaves_no_backup(sandbox) -> None:
    run = _dag("test_backup_failing_command").test()
    assert str(run.state) == "failed"
    locations = locations_from_policy(sandbox.policy, lambda loc: sandbox.s3_client(loc.region))
    for location in locations.values():
        assert [k for k in location.list("") if "adhoc-from-a-failing-command" in k] == []
