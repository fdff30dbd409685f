"""ReplicationLagSensor: succeeds when a named standby streams within a byte/time lag limit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowException

from continuity.health.checks import lag_verdict
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.triggers.replication_lag import ReplicationLagTrigger

DEFAULT_MAX_LAG_BYTES = 16 * 2**20  # the requirements' 16 MB replication lag threshold


class ReplicationLagSensor(BaseSensorOperator):
    """Wait until `standby` is streaming from the primary with lag under the limits.

    :param standby: the standby's node name (its application_name in pg_stat_replication).
    :param primary_conn_id: connection of the primary.
    :param max_lag_bytes: largest acceptable lag in bytes (default 16 MiB).
    :param max_lag_seconds: largest acceptable replay lag in seconds (default: no limit).
    :param deferrable: wait in the triggerer instead of occupying a worker slot.
    """

    template_fields: Sequence[str] = ("standby", "primary_conn_id", "max_lag_bytes", "max_lag_seconds")
    ui_color = "#d6eaf8"

    def __init__(self, *, standby: str, primary_conn_id: str, max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES,
                 max_lag_seconds: float | None = None, deferrable: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.standby = standby
        self.primary_conn_id = primary_conn_id
        self.max_lag_bytes = max_lag_bytes
        self.max_lag_seconds = max_lag_seconds
        self.deferrable = deferrable

    def _limits(self) -> tuple[int, float | None]:
        seconds = None if self.max_lag_seconds in (None, "", "None") else float(self.max_lag_seconds)
        return int(self.max_lag_bytes), seconds

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        max_bytes, max_seconds = self._limits()
        self.defer(
            trigger=ReplicationLagTrigger(primary_conn_id=self.primary_conn_id, standby=self.standby,
                                          max_lag_bytes=max_bytes, max_lag_seconds=max_seconds,
                                          poll_interval=self.poke_interval),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def poke(self, context: Context) -> bool:
        max_bytes, max_seconds = self._limits()
        row = PostgresNodeHook(postgres_conn_id=self.primary_conn_id).standby_replication(self.standby)
        ok, reason = lag_verdict(row, standby=self.standby, max_lag_bytes=max_bytes, max_lag_seconds=max_seconds)
        self.log.info("%s", reason)
        return ok

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        if not event or event.get("status") != "success":
            raise AirflowException(f"replication lag trigger for standby {self.standby} ended without success: {event}")
        self.log.info("%s", event["reason"])
