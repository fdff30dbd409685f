"""
### dr_config_backup — the configuration needed to rebuild the deployment

Daily: Airflow connections and variables (from the metadata database when the CLI can reach it,
and those defined in the environment), the policy file, and the infrastructure state files the
policy lists, as one `config` backup in every region. Secrets exist only inside the encrypted
archive: never in logs, XCom or the manifest.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from continuity.alerts.callbacks import report_failed_task
from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.config_backup import ConfigBackupOperator
from continuity.policy.loading import load_policy

with DAG(
    dag_id="dr_config_backup",
    description="Airflow variables/connections, policy, infrastructure state",
    doc_md=__doc__,
    schedule=load_policy().schedule_for("dr_config_backup"),  # include/policy.yaml is the one source
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=1),
    default_args={**DEFAULT_ARGS, "on_failure_callback": report_failed_task},
    tags=["continuity", "backup", "config"],
) as dag:
    ConfigBackupOperator(task_id="backup_configuration")
