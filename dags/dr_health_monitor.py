"""
### dr_health_monitor — is the DR topology ready for a disaster, right now?

Every 5 minutes, and at once when the triggerer's 30-second probe rounds see news (the first
unhealthy round, a disaster held for `consecutive_failures` rounds, recovery), checks what the
requirements' failover orchestrator watches:

| check | component (weight) |
|---|---|
| the primary answers and accepts writes | database (3) |
| each standby is in recovery and streams within 16 MiB and the strictest RPO | network (2) |
| the application entry point (PgBouncer) answers and leads to a writable primary | application (2) |
| every application instance answers; each business function's synthetic transaction succeeds | application (2) |
| each node answers a round trip within `max_latency` (1 s) | network (2) |
| each storage location's bucket and the serving region's application bucket are reachable | storage (1) |
| the archiver has no new failure and the WAL spool is not piling up | archiving (0) |
| replication settings and slots match the policy (configuration drift), `max_slot_wal_keep_size` too | configuration (0) |
| each replication slot retains less WAL than `slot_wal_alert_ratio` of `max_slot_wal_keep` | configuration (0), **alert** |

Every failing check also opens an incident of its own (cause `health:<check>`, one incident while it
stays red) at its component's severity in `health_monitor.alerts` (application high; network, storage,
archiving, configuration low: the internal teams only); the check marked **alert** at
`slot_wal_alert_severity` (high): a stopped standby's slot filling the primary's disk needs a person
before the bound. A disaster's critical incident stands for every failing check. Once a check has been
green for `resolve_after` (10 minutes) with nothing red reported, the monitor asks dr_incident to
resolve its incident (no recovery announcement unless the incident reached customers).

`assess_health` sums the weights of the failing components: a score at or above the policy's
`disaster_threshold` (3) is reported as a disaster; any failing check fails the run with a one-line
summary naming each failing check. The checks never change the database.

`auto_failover` (off unless the policy sets `health_monitor.auto_failover: true`) counts consecutive
disaster assessments in the Variable `continuity_disaster_streak` (a run started by a `disaster`
probe-round event counts the rounds the triggerer saw); when the streak reaches
`consecutive_failures` (flap protection), it triggers dr_failover once — mode failover, target the
DR region's healthy standby with the least lag, reason "automatic: …" — and resets the streak.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable, TriggerRule

from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.auto_failover import AutoFailoverOperator
from continuity.operators.health import (
    ApplicationHealthOperator,
    ArchiverHealthOperator,
    ConfigurationDriftOperator,
    DatabaseHealthOperator,
    EntryPointHealthOperator,
    HealthAssessmentOperator,
    StorageHealthOperator,
)
from continuity.policy.loading import load_policy
from continuity.triggers.probe_rounds import ProbeRoundTrigger

_policy = load_policy()
# The 30-second probe rounds run in the triggerer; a round that is news (degraded, disaster held for
# consecutive_failures rounds, recovered) starts a run of this DAG at once.
HEALTH_ROUNDS = Asset("continuity-health-rounds", watchers=[AssetWatcher(
    name="probe_rounds", trigger=ProbeRoundTrigger(interval=_policy.health_monitor.probe_interval.total_seconds()))])

with DAG(
    dag_id="dr_health_monitor",
    description="Replication and node health, weighted failure score",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(  # include/policy.yaml is the one source of the cron schedule
        timetable=CronTriggerTimetable(_policy.schedule_for("dr_health_monitor"), timezone="UTC"),
        assets=[HEALTH_ROUNDS]),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=4),
    # A health check is read-only, but a retry would only delay the verdict of a 5-minute monitor.
    default_args={**DEFAULT_ARGS, "retries": 0},
    tags=["continuity", "health"],
) as dag:
    checks = [
        DatabaseHealthOperator(task_id="check_database"),
        EntryPointHealthOperator(task_id="check_entry_point"),
        ApplicationHealthOperator(task_id="check_application"),
        StorageHealthOperator(task_id="check_storage"),
        ArchiverHealthOperator(task_id="check_archiver"),
        ConfigurationDriftOperator(task_id="check_configuration"),
    ]
    assessment = HealthAssessmentOperator(
        task_id="assess_health",
        check_task_ids=[task.task_id for task in checks],
        trigger_rule=TriggerRule.ALL_DONE,
    )
    checks >> assessment
    # A teardown so that it never decides the run's state: the assessment's verdict does.
    assessment >> AutoFailoverOperator(task_id="auto_failover").as_teardown()
