"""
### dr_restore_test — weekly proof that the DR region alone can restore the database

Picks a logical backup from the DR region (never the primary region), at random among the last
week's but the same for a given run id (a rerun tests the same backup), and restores a sample of
tables — the policy's sample size, always including the critical tables, with their foreign-key
parents — into a scratch PostgreSQL cluster. Great Expectations checks the exact row counts of
the manifest, each sampled table's schema (columns and constraints), primary keys, foreign keys and
freshness, and pg_amcheck checks the rebuilt indexes. The restore time is extrapolated to the
full database and compared with the RTO of each business function that depends on it. A copy
that fails authentication is reported and the restore continues from another location. The
report (JSON + Markdown) goes to `reports/restore-test/` in every required location. A Deadline
Alert fires (log + `alerts/` in storage) when a run is still going past the tightest RTO target.
When the restore itself cannot run, a failure report is still written. The teardown task
`remove_scratch_clusters` removes any scratch cluster the run left behind, whatever happened.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from continuity.alerts.callbacks import report_failed_task
from continuity.alerts.deadlines import rto_deadline
from continuity.dag_defaults import DEFAULT_ARGS, START_DATE, region_queue
from continuity.operators.sample_restore import SampleRestoreTestOperator
from continuity.operators.scratch import RemoveScratchClustersOperator
from continuity.policy.loading import load_policy

_policy = load_policy()

with DAG(
    dag_id="dr_restore_test",
    description="Cross-region sample restore validated with Great Expectations",
    doc_md=__doc__,
    schedule=_policy.schedule_for("dr_restore_test"),  # include/policy.yaml is the one source
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    deadline=rto_deadline("dr_restore_test"),
    dagrun_timeout=timedelta(hours=4),
    # a retry restores the same backup into a fresh scratch cluster
    # queue: the DR region restores alone, from its own storage (CeleryExecutor; ignored by standalone)
    default_args={**DEFAULT_ARGS, "on_failure_callback": report_failed_task, "queue": region_queue(_policy.topology.dr_region)},
    tags=["continuity", "restore"],
) as dag:
    (
        SampleRestoreTestOperator(task_id="sample_restore_test")
        >> RemoveScratchClustersOperator(task_id="remove_scratch_clusters").as_teardown()
    )
