"""
### dr_object_replication — the application's videos and uploads in the DR region, every 15 minutes

One task per object category of the policy (`objects.categories`: video_content, user_uploads):

- copies every object version created at the source since the stored checkpoint to every replica
  bucket (streamed, multipart above the policy's part size, or server-side where the endpoint
  allows it), each verified by the SHA-256 of its content recorded at copy time in the replica's
  ledger (`.continuity/ledger/`);
- records source deletes and never copies them as deletions (the replicas keep every version);
  more deletes in one run than the policy's `deletes.max_per_run` fails the run as an alarm;
- sets the replicas' versioning, object lock and lifecycle rules from the policy the first time and
  reports any later drift as an alarm;
- measures the lag: the heartbeat object the previous run wrote at the source, from its write to
  its copy in every replica, against the category's RPO target and maximum (past the maximum: alarm).

A failed copy leaves no partial object and holds the checkpoint back: the next run copies it again.
Run records: `objects/<category>/runs/` in every required storage location.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from continuity.alerts.callbacks import report_failed_task
from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.objects import ReplicateObjectsOperator
from continuity.policy.loading import load_policy

_objects = load_policy().objects

with DAG(
    dag_id="dr_object_replication",
    description="Replicate video and upload objects to the DR region, verified; deletes recorded; lag measured",
    doc_md=__doc__,
    schedule=load_policy().schedule_for("dr_object_replication"),  # include/policy.yaml is the one source
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=14),
    # a retry resumes from the checkpoint; copies already made are skipped
    default_args={**DEFAULT_ARGS, "on_failure_callback": report_failed_task},
    tags=["continuity", "backup", "objects"],
) as dag:
    for _category in (_objects.categories if _objects else {}):
        ReplicateObjectsOperator(task_id=f"replicate_{_category}", category=_category)
