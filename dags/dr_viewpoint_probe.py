"""
### dr_viewpoint_probe — the primary as each region sees it

Every 2 minutes (`schedules.dr_viewpoint_probe`), one task per region that holds database nodes, each on
that region's Celery queue (its own worker, its own network path), connects to the primary and records
what it saw, with the time, in the Variable `continuity_viewpoint_<region>`: writable, in recovery, or
not reachable (and why). Nothing is written to the database.

`dr_health_monitor` probes from the control region. When its `auto_failover` is about to promote, it
reads these observations: if the primary's own region saw the primary writable within the last two
periods, the monitor's path is cut (a partition) and it alerts instead of promoting; a region that has
been silent for two periods, or that sees the primary gone too, agrees with the monitor.

A task whose region is lost never runs (no worker takes its queue): the run times out after one period,
the next starts on time, and that region's observation ages into silence, which is the point.
Under the LocalExecutor (`make run`) queues are ignored: both viewpoints are this machine's.
"""

from __future__ import annotations

from airflow.sdk import DAG, CronTriggerTimetable

from continuity.dag_defaults import DEFAULT_ARGS, START_DATE, region_queue
from continuity.operators.health import ViewpointProbeOperator
from continuity.policy.loading import load_policy
from continuity.health.viewpoints import DAG_ID, viewpoint_period, viewpoint_regions

_policy = load_policy()

with DAG(
    dag_id=DAG_ID,
    description="Each region's view of the primary, for telling a partition from a region loss",
    doc_md=__doc__,
    schedule=CronTriggerTimetable(_policy.schedule_for(DAG_ID), timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    # A lost region's task stays queued: the run gives up after one period so the next one starts.
    dagrun_timeout=viewpoint_period(_policy),
    # An observation is only worth its time: a retry would record a stale question's answer late.
    default_args={**DEFAULT_ARGS, "retries": 0},
    tags=["continuity", "health"],
) as dag:
    for region in viewpoint_regions(_policy):
        ViewpointProbeOperator(task_id=f"observe_from_{region.replace('-', '_')}", region=region,
                               queue=region_queue(region))
