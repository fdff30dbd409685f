"""Test-only DAGs: ReplicationLagSensor on its own, in poke and deferrable mode."""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import DAG

from continuity.sensors.replication_lag import ReplicationLagSensor

for dag_id, standby, deferrable, timeout in [
    ("test_lag_sensor_poke", "dr", False, 30),
    ("test_lag_sensor_deferrable", "dr", True, 30),
    ("test_lag_sensor_short_timeout", "dr", False, 3),
]:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False) as dag:
        ReplicationLagSensor(task_id="wait_for_standby", primary_conn_id="continuity_pg_primary", standby=standby,
                             max_lag_bytes=16 * 2**20, deferrable=deferrable, timeout=timeout, poke_interval=1)
    globals()[dag_id] = dag
