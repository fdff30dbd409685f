"""
### dr_region_recovery — the quarterly region-loss exercise (and on demand)

Loses the whole primary region for real and recovers in the DR region, measuring every business
function; then rebuilds the lost region and switches back, leaving everything as it was found.

1. `plan_exercise` records the starting point (the primary, who streams from it, where the
   application serves) and checks it: the primary in the region to lose, a standby streaming in the
   recovery region, the application serving. Nothing changes if a check fails.
2. `lose_region_and_recover`, under a user writing annotations through the application (following the
   regions' URLs as DNS failover would): a marker row is committed, then every process of the region
   stops without a clean handover (application, Redis, PostgreSQL nodes) and its S3 endpoint refuses
   every request; dr_failover's steps run in failover mode with the lost nodes left alone, the DR
   application and Redis start, every function's synthetic transaction validates the DR site. Each
   function's RTO runs from the loss to its transaction's success; RPO per data category: the marker
   and the writer's acknowledged writes (database), the DR replica's heartbeat and the recovered
   database's references (objects), the newest config backup's age (configuration). The report goes
   to `reports/region-recovery/<run>.json` (+ `.md`) in the required locations that are not lost.
3. `restore_region` (always): the region's storage and Redis come back; its nodes are rebuilt as
   standbys of the recovered primary (pg_rewind).
4. `switch_back`: a switchover to the original primary, the application moving back and validated.
5. `check_left_as_found` (always): every acknowledged write still there, the cluster and the
   application as found, every function within its RTO and RPO maximum; the final report goes to every
   required location. The run fails here, naming each failure.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, TriggerRule

from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.region_recovery import (CheckLeftAsFoundOperator, LoseRegionAndRecoverOperator,
                                                  PlanRegionLossOperator, RestoreRegionOperator, SwitchBackOperator)
from continuity.policy.loading import load_policy

with DAG(
    dag_id="dr_region_recovery",
    description="Quarterly region-loss exercise: lose the primary region, recover, measure, come back",
    doc_md=__doc__,
    schedule=load_policy().schedule_for("dr_region_recovery"),  # include/policy.yaml is the one source
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=4),
    # an exercise's timings mean nothing after a retry, and a retried loss would lose the region twice
    default_args={**DEFAULT_ARGS, "retries": 0},
    tags=["continuity", "drill", "failover"],
) as dag:
    plan = PlanRegionLossOperator(task_id="plan_exercise")
    recover = LoseRegionAndRecoverOperator(task_id="lose_region_and_recover")
    restore = RestoreRegionOperator(task_id="restore_region", trigger_rule=TriggerRule.ALL_DONE)
    back = SwitchBackOperator(task_id="switch_back")
    check = CheckLeftAsFoundOperator(task_id="check_left_as_found", trigger_rule=TriggerRule.ALL_DONE)
    plan >> recover >> restore >> back >> check
