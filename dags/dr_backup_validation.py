"""
### dr_backup_validation — are the backups still there, intact, fresh, and no older than needed?

Daily:

- `catch_up`: every backup and WAL segment stored while a required location did not answer
  (`degraded`, see docs/runbooks/region-recovery.md) is copied into that location once it answers;
  fails when one has been missing backups longer than the policy's `storage.max_degraded`.
- `verify_and_repair`: shallow-verify every backup in every location (manifest authentic, object
  present, size and the location's checksum as recorded); deep-verify (decrypt every chunk) the
  newest backup of each kind and a random sample whose size the policy sets. A copy missing or bad
  in a required location is repaired from a healthy location, verified deep, and reported. Fails
  when anything could not be repaired.
- `verify_objects`: the inventory diff of the application's objects (video content, user
  uploads): every current source version must be in every replica with the same size; a random
  sample is downloaded and checked against the SHA-256 recorded at copy time; anything missing or
  different is copied again.
- `stale_backup_alarm`: fails when the newest backup of the kinds that prove a data category is
  older than that category's RPO maximum, or when an object category's last complete replication
  run (its checkpoint) is.
- `check_database_integrity`: the requirements' daily `database_integrity` check: amcheck reads and
  verifies every table page and B-tree index of the policy's databases on a DR-region standby; fails
  naming each corrupt relation (the backups taken since hold the bad page too). Skipped, saying
  `not measured` and why, where the database has no amcheck extension (the sandbox: an extension in
  the application database would be in every logical backup and break restores into targets that
  cannot create it).
- `apply_retention`: the policy's retention per kind and location; never deletes a backup under a
  hold (`holds/<backup id>` in the location), the newest `keep_last` full backups, or anything the
  point-in-time recovery window needs (its base backup and every WAL file after it). Each deletion
  is logged with its reason; trigger with `dry_run_retention` to see the plan only.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from continuity.alerts.callbacks import report_failed_task
from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.validation import (CatchUpOperator, DatabaseIntegrityOperator, RetentionOperator,
                                              StaleBackupAlarmOperator, VerifyAndRepairOperator, VerifyObjectsOperator)
from continuity.policy.loading import load_policy

with DAG(
    dag_id="dr_backup_validation",
    description="Verify copies in every region, repair, stale-backup alarm, retention",
    doc_md=__doc__,
    schedule=load_policy().schedule_for("dr_backup_validation"),  # include/policy.yaml is the one source
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=4),
    # verification and repair re-check before acting
    default_args={**DEFAULT_ARGS, "on_failure_callback": report_failed_task},
    params={"dry_run_retention": Param(False, type="boolean", title="Retention dry run",
                                       description="Log what retention would delete, delete nothing.")},
    tags=["continuity", "backup", "validation"],
) as dag:
    # verify runs after the catch-up whatever its outcome: a location still missing backups is its finding too.
    verify = VerifyAndRepairOperator(task_id="verify_and_repair", trigger_rule="all_done")
    CatchUpOperator(task_id="catch_up") >> verify
    verify >> RetentionOperator(task_id="apply_retention", dry_run="{{ params.dry_run_retention }}")
    StaleBackupAlarmOperator(task_id="stale_backup_alarm")
    VerifyObjectsOperator(task_id="verify_objects")
    DatabaseIntegrityOperator(task_id="check_database_integrity")
