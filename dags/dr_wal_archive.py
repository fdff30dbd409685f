"""
### dr_wal_archive — ship the hour's WAL to every region

Every hour:

1. `switch_wal` forces a WAL switch on the primary so the hour is closed; `wal_archived` waits
   (deferrable: in the triggerer, no worker slot) until the archiver has put the segment in the
   spool, and fails at once, naming the file, when the archiver is failing.
2. `ship_wal` ships every completed spool file (segments, `.history`, `.backup`) through the backup
   engine to every storage location, one archive per file named `wal-<file>`; a file leaves the
   spool only when every required location holds a verified copy, or (its storage gone) does not
   answer while another required location holds one: the file is then degraded, marked, and
   `catch_up` copies it there once it answers. A rerun ships nothing twice; a
   name already shipped with different contents stops the run as an alarm. Fails when
   `pg_stat_archiver` shows a new failure or the spool keeps growing; logs archive lag against the
   RPO of each data category.
3. `catch_up` copies every degraded backup and segment into the location it is missing from, once
   that location answers; it fails when one has been missing backups longer than the policy's
   `storage.max_degraded`.
4. `refresh_wal_index` compares every location's WAL index with its manifests, checksum by checksum,
   and rewrites the packs that differ, so a restore finds its WAL in a few reads among tens of
   thousands of segments; an unauthentic manifest or pack fails it.
5. `check_wal_continuity` proves, per required location and timeline, that no segment is missing
   from the start of the oldest kept base backup to the newest segment.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from continuity.alerts.callbacks import report_failed_task
from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.wal import (RefreshWalIndexOperator, ShipWalOperator, SwitchWalOperator,
                                      WalContinuityOperator)
from continuity.operators.validation import CatchUpOperator
from continuity.policy.loading import load_policy
from continuity.sensors.wal_archived import WalArchivedSensor

with DAG(
    dag_id="dr_wal_archive",
    description="Ship archived WAL to every region; archive health and continuity",
    doc_md=__doc__,
    schedule=load_policy().schedule_for("dr_wal_archive"),  # include/policy.yaml is the one source
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=50),
    # every step is idempotent: a retry re-checks before it acts
    default_args={**DEFAULT_ARGS, "on_failure_callback": report_failed_task},
    tags=["continuity", "backup", "wal"],
) as dag:
    (
        SwitchWalOperator(task_id="switch_wal")
        >> WalArchivedSensor(task_id="wal_archived", segment="{{ ti.xcom_pull(task_ids='switch_wal') }}")
        >> ShipWalOperator(task_id="ship_wal")
        >> CatchUpOperator(task_id="catch_up")
        >> RefreshWalIndexOperator(task_id="refresh_wal_index")
        >> WalContinuityOperator(task_id="check_wal_continuity")
    )
