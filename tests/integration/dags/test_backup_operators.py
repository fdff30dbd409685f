"""Test-only DAGs: the backup operators on their own."""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import DAG

from continuity.operators.backup import StreamCommandToBackupOperator, VerifyBackupOperator

with DAG("test_backup_operators", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False) as ok_dag:
    stream = StreamCommandToBackupOperator(task_id="stream", command=["seq", "1", "300000"], kind="adhoc",
                                           label="seq from a test DAG", details={"rows": 300000})
    verify = VerifyBackupOperator(task_id="verify", backup_id="{{ ti.xcom_pull(task_ids='stream') }}", deep=True)
    stream >> verify

with DAG("test_backup_failing_command", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         catchup=False) as failing_dag:
    StreamCommandToBackupOperator(task_id="stream", kind="adhoc", backup_id="adhoc-from-a-failing-command",
                                  command=["sh", "-c", "seq 1 100000; echo 'pg_dump: connection lost' >&2; exit 3"])
