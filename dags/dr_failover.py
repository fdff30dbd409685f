"""
### dr_failover — switchover or failover to a standby, triggered by an operator

Trigger with params (the form shows each): `target` (the standby to promote), `mode`
(`switchover`: the primary is alive and no committed transaction may be lost; `failover`: the
primary is lost), `max_lag_bytes` and `force`, `dry_run`, `reason` (required) and `incident_id`.

0. `wait_for_lease` waits (in the triggerer, up to the policy's `failover.lease_ttl`) while another
   run holds the cluster lease (a drill's switchover, the region-loss exercise, another dr_failover):
   the run then decides on the cluster as that run left it; past the wait it fails naming the
   holder, nothing changed. An automatic failover (`automatic`, set by dr_health_monitor) decides
   again here: when the primary answers and accepts writes by then, it does nothing.
1. `preflight` validates the params and checks the target (reachable, in recovery, timeline, WAL
   receiver, replay lag) and, for a switchover, the primary. A failed check stops the run here,
   naming it; nothing has changed (a target that already is the primary is such a failure, and
   the log shows the current topology). A rerun of a run that completed is a no-op.
2. `approve`: a second person approves the plan (the policy's `failover.approval`; off in the
   sandbox policy; the health monitor's automatic failovers, which no person triggers, do not wait). A human-in-the-loop task any dr_operator may answer except the one who
   triggered the run; once approved, preflight's checks run again. Reject, no answer within the
   timeout (15 min), a self-approval or a changed cluster stop the run here, nothing changed.
3. `cut_over`, one task so that no scheduler round trip lengthens the outage (each step's record,
   with its timing, is in its XCom and the audit):
   - fence: switchover — PgBouncer PAUSE, clean stop of the primary, fence (it can only come back
     as a standby), final LSN. Failover — stop the old primary if it runs, and fence it; when it
     cannot be reached (lost, or behind a partition), the paused entry point fences it and the run
     deposes it for the guard beside it, waiting the guard's ttl + one poll (15 s in the sandbox)
     before promoting (continuity.failover.guard; docs/runbooks/failover.md, "A partition").
   - catch-up: wait (the policy's `failover.catch_up_timeout`, 60 s) for the target to replay the
     final LSN (switchover) or to stop receiving WAL (failover, with the data loss estimate).
   - promote: pg_promote(wait => true); a new timeline is confirmed and recorded at once.
   - repoint: PgBouncer now leads to the new primary (ini rewrite, RELOAD, RESUME); every DAG
     follows the primary recorded in step 7.
4. `start_application`: when the target is in another region, that region's Redis becomes the
   primary and its application instances and workers start (the policy's service control); the old
   region's are stopped and its Redis follows, where it still answers.
5. `rejoin`: other standbys follow the new primary; the old one is rewound with pg_rewind and
   restarted as a standby (or reported as needing a rebuild).
6. `validate`: a write through the entry point, standbys streaming, WAL archived on the new
   timeline, and every business function's synthetic transaction in the new primary's region.
7. `record` (always): the topology (Variable `continuity_topology` + `topology/current.json`) and
   the audit (`audit/failover/<run>-<digest>/try<attempt>-<time>.json`, one per attempt: who triggered and who approved, params, each step's record, unavailability, data
   loss, outcome). `rollback` runs when a step failed: a switchover puts the old primary back; a
   failover stops with exactly one writable primary and names it.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, TriggerRule

from continuity.dag_defaults import DEFAULT_ARGS, START_DATE, region_queue
from continuity.operators.failover import (
    ApproveFailoverOperator,
    CutOverOperator,
    PreflightOperator,
    RecordOperator,
    RejoinOperator,
    RollbackOperator,
    StartApplicationOperator,
    ValidateOperator,
)
from continuity.policy.loading import load_policy
from continuity.sensors.cluster_lease import ClusterLeaseFreeSensor

_policy = load_policy()
_nodes = [node.name for node in _policy.topology.nodes]
_dr_standbys = [n.name for n in _policy.topology.standbys if n.region == _policy.topology.dr_region]

with DAG(
    dag_id="dr_failover",
    description="Switchover or failover to a standby, with fencing, repointing, rejoin and audit",
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    # No dagrun_timeout: a run timed out as a whole skips rollback and record (PgBouncer left paused, no audit).
    # Each step has the policy's step_timeout instead (the approval its own): a step over it fails, and rollback
    # and record run as after any failure.
    # retries 0: no step may run twice on its own, rerun the DAG instead. queue: the control region's, never
    # the region failed away from (the policy keeps the control region out of the primary region).
    default_args={**DEFAULT_ARGS, "retries": 0, "queue": region_queue(_policy.control_region),
                  "execution_timeout": _policy.failover.step_timeout},
    params={
        "target": Param(_dr_standbys[0] if _dr_standbys else _nodes[-1], type="string", title="Target",
                        description="The standby to promote.", examples=_nodes),
        "mode": Param("switchover", type="string", enum=["switchover", "failover"], title="Mode",
                      description="switchover: planned, the primary is alive, no committed transaction may be lost. "
                                  "failover: the primary is lost or unusable."),
        "max_lag_bytes": Param(16 * 2**20, type="integer", minimum=0, title="Maximum replay lag (bytes)",
                               description="Refuse a target further behind than this (the requirements' 16 MiB)."),
        "force": Param(False, type="boolean", title="Force",
                       description="Failover only: accept a target over the lag limit (recorded in the audit)."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Run every check and print the plan; change nothing."),
        "reason": Param("", type="string", title="Reason",
                        description="Required: why. Goes into the logs and the audit."),
        "incident_id": Param("", type=["string", "null"], title="Incident id", description="Optional."),
        "automatic": Param(False, type="boolean", title="Automatic",
                           description="Set by dr_health_monitor's automatic failover: the run decides again before "
                                       "it acts and does nothing when the primary answers and accepts writes."),
    },
    tags=["continuity", "failover"],
) as dag:
    wait_for_lease = ClusterLeaseFreeSensor(
        task_id="wait_for_lease", timeout=_policy.failover.lease_ttl.total_seconds(),
        execution_timeout=_policy.failover.lease_ttl + _policy.failover.step_timeout)
    preflight = PreflightOperator(task_id="preflight")
    approve = ApproveFailoverOperator(task_id="approve", execution_timeout=None)  # bounded by the approval's timeout
    cut_over = CutOverOperator(task_id="cut_over")
    start_application = StartApplicationOperator(task_id="start_application")
    rejoin = RejoinOperator(task_id="rejoin")
    validate = ValidateOperator(task_id="validate")
    rollback = RollbackOperator(task_id="rollback", trigger_rule=TriggerRule.ONE_FAILED)
    record = RecordOperator(task_id="record", trigger_rule=TriggerRule.ALL_DONE)

    wait_for_lease >> preflight >> approve >> cut_over >> start_application >> rejoin >> validate
    [approve, cut_over, start_application, rejoin, validate] >> rollback >> record
    validate >> record
