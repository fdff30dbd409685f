"""
### dr_full_backup — daily full backups at 02:00 UTC

- `logical_backup`: for each application database of the policy, a REPEATABLE READ transaction
  exports its snapshot; every table's row count and a schema fingerprint are taken in that
  snapshot, and `pg_dump --snapshot -Fc` streams through the backup engine (zstd + AES-256-GCM) to
  every region. The manifest keeps the counts, so a restore can be checked exactly.
- `physical_backup`: `pg_basebackup` in tar format to stdout with the WAL it needs and PostgreSQL's
  `backup_manifest` (for `pg_verifybackup`), from the synchronous standby when the policy says so.

Nothing is staged on local disk; progress is logged. Ids carry the logical date, so a rerun for
the same date is a no-op. A node lost mid-backup fails the task naming it, leaves no manifest, and
the retry starts clean. Each run publishes the `continuity://backups/logical` and
`continuity://backups/physical` assets (lineage in the UI; restore tests and drills run on cron).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset

from continuity.alerts.callbacks import report_failed_task
from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.full_backup import LogicalBackupOperator, PhysicalBackupOperator
from continuity.policy.loading import load_policy

LOGICAL_BACKUPS = Asset("continuity://backups/logical")
PHYSICAL_BACKUPS = Asset("continuity://backups/physical")

with DAG(
    dag_id="dr_full_backup",
    description="Snapshot-consistent logical dump and physical base backup, every region",
    doc_md=__doc__,
    schedule=load_policy().schedule_for("dr_full_backup"),  # include/policy.yaml is the one source
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    # a retry starts clean
    default_args={**DEFAULT_ARGS, "retry_delay": load_policy().backups.full.retry_delay,
                  "on_failure_callback": report_failed_task},
    tags=["continuity", "backup"],
) as dag:
    LogicalBackupOperator(task_id="logical_backup", outlets=[LOGICAL_BACKUPS])
    PhysicalBackupOperator(task_id="physical_backup", outlets=[PHYSICAL_BACKUPS])
