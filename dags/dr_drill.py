"""
### dr_drill — monthly full recovery drill with measured RTO and RPO

0. `wait_for_lease` waits (in the triggerer) while a dr_failover run or the region-loss exercise holds
   the cluster lease: the drill's marker commit and WAL switch need a primary that is not being
   switched over.
1. `start_drill` notes the start, commits the point-in-time markers, then commits a marker row every
   quarter second for `validation.drill.marker_stream` (15 s) through the application entry point, as
   an application writes on; the end of that stream is the disaster instant.
2. `switch_wal`, `wal_archived` (deferrable: waits in the triggerer) and `ship_wal` get the markers' WAL
   to every region, for the point-in-time check (the RPO rebuild does not use what they add).
3. `rebuild_and_measure` rebuilds the database in a scratch cluster from what the DR region's storage
   held at the disaster instant alone (the newest base backup and the WAL stored by then, recovered to
   its end), runs the full expectation suite, and measures RTO (drill start to a writable, validated
   database, by phase: fetch and unpack, WAL staging, WAL replay, validation) and RPO (what a disaster
   at that instant would have lost: the newest marker committed before it minus the newest one
   recovered), compared with every business function, tier 1 and data category of the policy. Then a
   second rebuild recovers to a point between the two point-in-time markers. The report (JSON +
   Markdown) goes to `reports/drill/` in every required location, also when the rebuild fails.
4. `live_switchover` (param `include_switchover`, default the policy's
   `validation.drill.include_switchover`, on in the sandbox): switches over to the DR region's
   standby and back with dr_failover's steps while a writer commits through the entry point; the
   report `reports/drill/<id>-switchover.json` gives the application-visible outage (longest gap
   between acknowledged commits) and proves no acknowledged commit was lost.
5. `remove_scratch_clusters` (teardown) removes any scratch cluster the run left behind.
6. `test_communication` sends a message marked as a test through every channel of every internal
   audience of the policy (Slack, PagerDuty as a change event that pages nobody, e-mail) and checks
   each delivery's receipt (`incidents/<id>/receipts/`); a channel that failed fails the task.

A Deadline Alert fires when a run is still going past the tightest RTO target of the policy: the
alert is logged and written to `alerts/` in every required location.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from continuity.alerts.callbacks import report_failed_task
from continuity.alerts.deadlines import rto_deadline
from continuity.dag_defaults import DEFAULT_ARGS, START_DATE, region_queue
from continuity.operators.drill import LiveSwitchoverOperator, RebuildAndMeasureOperator, StartDrillOperator
from continuity.operators.incident import CommunicationTestOperator
from continuity.operators.scratch import RemoveScratchClustersOperator
from continuity.operators.wal import ShipWalOperator, SwitchWalOperator
from continuity.policy.loading import load_policy
from continuity.sensors.cluster_lease import ClusterLeaseFreeSensor
from continuity.sensors.wal_archived import WalArchivedSensor

_policy = load_policy()

with DAG(
    dag_id="dr_drill",
    description="Full recovery drill in isolation with measured RTO/RPO",
    doc_md=__doc__,
    schedule=_policy.schedule_for("dr_drill"),  # include/policy.yaml is the one source
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    deadline=rto_deadline("dr_drill"),
    dagrun_timeout=timedelta(hours=8),
    # a drill's timings mean nothing after a retry
    # queue: a drill rebuilds in the DR region, as a real recovery would (CeleryExecutor; ignored by standalone)
    default_args={**DEFAULT_ARGS, "retries": 0, "on_failure_callback": report_failed_task,
                  "queue": region_queue(_policy.topology.dr_region)},
    params={"include_switchover": Param(_policy.validation.drill.include_switchover, type="boolean",
                                        title="Include a live switchover",
                                        description="Also switch over to the DR standby and back under a "
                                                        "writer, measuring the application-visible outage.")},
    tags=["continuity", "restore", "drill"],
) as dag:
    (
        ClusterLeaseFreeSensor(task_id="wait_for_lease", timeout=_policy.failover.lease_ttl.total_seconds())
        >> StartDrillOperator(task_id="start_drill", include_switchover="{{ params.include_switchover }}")
        >> SwitchWalOperator(task_id="switch_wal")
        >> WalArchivedSensor(task_id="wal_archived", segment="{{ ti.xcom_pull(task_ids='switch_wal') }}")
        >> ShipWalOperator(task_id="ship_wal")
        >> RebuildAndMeasureOperator(task_id="rebuild_and_measure")
        >> LiveSwitchoverOperator(task_id="live_switchover", include_switchover="{{ params.include_switchover }}")
        >> RemoveScratchClustersOperator(task_id="remove_scratch_clusters").as_teardown()
    )
    # Independent of the rebuild: the people who would be told of a real disaster can be reached.
    CommunicationTestOperator(task_id="test_communication", drill_id="{{ run_id }}")
