"""Every DAG through `airflow dags test`, the command the README shows, with the sandbox's environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The README's command, `airflow dags test`, in its own process with the sandbox's environment: for the DAGs that
# no in-process run (dag.test) covers; dr_failover's dry run is also the command's representative (a process of
# its own takes 50-90 s under load here). Every other DAG runs through dag.test in its own module (the same DAG
# code, without a second interpreter and DAG bag each time):
IN_PROCESS = {"dr_full_backup": "test_full_backup", "dr_config_backup": "test_validation_and_config", "dr_wal_archive": "test_wal_archive, test_full_backup",
              "dr_object_replication": "test_object_replication", "dr_backup_validation": "test_validation_and_config",
              "dr_restore_test": "test_restore_test_dag", "dr_drill": "test_drill",
              "dr_health_monitor": "test_health_monitor, test_failover", "dr_viewpoint_probe": "test_failover"}
ORDER = ["dr_failover", "dr_incident", "dr_incident_inbox"]
CONF = {"dr_failover": {"target": "dr", "mode": "switchover", "dry_run": True, "reason": "airflow dags test"},
        # A communication drill: test messages on every channel, no human step (dags test answers none).
        "dr_incident": {"kind": "drill", "severity": "low", "title": "communication test (airflow dags test)"}}
DAG_IDS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "dags").glob("dr_*.py"))


# DAGs whose every path waits for a person: `airflow dags test` would wait for an answer no one gives.
NEEDS_A_PERSON = {"dr_plan_review": "tested under the scheduler, answered through the REST API (test_plan_review)"}
# DAGs that reshape the whole sandbox: run end to end with a sandbox of their own.
OWN_SANDBOX = {"dr_region_recovery": "loses the primary region: test_region_recovery, its own sandbox"}


def test_every_dag_is_run_somewhere() -> None:
    assert sorted(ORDER + list(IN_PROCESS) + list(NEEDS_A_PERSON) + list(OWN_SANDBOX)) == DAG_IDS
    tests_dir = Path(__file__).resolve().parent
    for dag_id, modules in IN_PROCESS.items():
        for module in modules.split(", "):
            assert f'load_dag("{dag_id}")' in (tests_dir / f"{module}.py").read_text(), (dag_id, module)


@pytest.mark.parametrize("dag_id", ORDER)
def test_dag_runs_under_airflow_dags_test(sandbox, airflow_db, dag_id: str) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    argv = [str(airflow), "dags", "test", dag_id, *(["-c", json.dumps(CONF[dag_id])] if dag_id in CONF else [])]
    result = subprocess.run(argv, env={**os.environ, "PATH": f"{airflow.parent}:{os.environ['PATH']}"},
                            capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    errors = "\n".join(line[:1500] for line in output.splitlines() if "[error" in line or "Exception:" in line)
    assert result.returncode == 0 and "Traceback" not in output, errors + "\n...\n" + output[-2000:]
    assert "DagRun Finished" in output and "state=success" in output, output[-4000:]
