"""
### dr_incident_inbox — every reported cause becomes a dr_incident run, within seconds; updates every 30 minutes

Event-driven (an Airflow AssetWatcher): the triggerer watches the incident inbox in storage
(`incidents/inbox/` in every required location) and each cause left there starts this DAG, which
triggers one `dr_incident` run per cause. Causes come from:

- failed tasks of the backup, WAL, object replication, validation, config backup, restore test and
  drill DAGs (cause `failed:<dag>:<task>`: one incident per failing step, however many runs fail);
- `dr_health_monitor`'s disaster assessment (cause `disaster:<primary>`), each failing check that is no
  disaster (cause `health:<check>`), and the resolution of a check's incident once it is green again;
- every `dr_failover` run, at its start and with its outcome (cause `failover:<run id>`; a planned
  switchover or a dry run pages nobody);
- a restore test or drill still running past its RTO target (cause `rto-missed:<dag>`).

dr_incident joins a cause that already has an open incident, so nobody is told twice.

Every 5 minutes as well, it asks for a status update (`dr_incident` with action `update`) of each open
incident whose last update is older than the policy's `communication.update_interval` (30 minutes).
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable

from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.incident import IncidentWorkOperator
from continuity.policy.loading import load_policy
from continuity.triggers.incident_inbox import IncidentInboxTrigger

INCIDENT_CAUSES = Asset("continuity-incident-causes",
                        watchers=[AssetWatcher(name="incident_inbox", trigger=IncidentInboxTrigger(poll_interval=5))])

with DAG(
    dag_id="dr_incident_inbox",
    description="Turn each reported cause (failed run, disaster assessment, failover) into a dr_incident run",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(load_policy().schedule_for("dr_incident_inbox"),
                                                                timezone="UTC"),
                                 assets=[INCIDENT_CAUSES]),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,  # dr_incident dedups by cause: a retried trigger joins the open incident
    tags=["continuity", "incident", "communication"],
) as dag:
    causes = IncidentWorkOperator(task_id="read_causes_and_updates_due")
    TriggerDagRunOperator.partial(task_id="start_incident_runs",
                                  trigger_dag_id="dr_incident").expand(conf=causes.output)
