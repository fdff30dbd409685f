"""ReplicationLagTrigger: waits in the triggerer until a standby is within a lag limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from airflow.triggers.base import BaseTrigger, TriggerEvent

from continuity.health.checks import lag_verdict
from continuity.postgres.node import standby_replication_async


class ReplicationLagTrigger(BaseTrigger):
    """Poll the primary's pg_stat_replication until `standby` is streaming within the limits.

    Only the connection id is serialized (never the password): the conninfo is resolved in the
    triggerer. Connection errors are logged and retried; the sensor's timeout bounds the wait.

    :param primary_conn_id: connection of the primary the standby streams from.
    :param standby: the standby's application_name (its node name).
    :param max_lag_bytes: largest acceptable replay lag in bytes.
    :param max_lag_seconds: largest acceptable replay lag in seconds, or None.
    :param poll_interval: seconds between polls.
    """

    def __init__(self, *, primary_conn_id: str, standby: str, max_lag_bytes: int,
                 max_lag_seconds: float | None = None, poll_interval: float = 5.0) -> None:
        super().__init__()
        self.primary_conn_id = primary_conn_id
        self.standby = standby
        self.max_lag_bytes = max_lag_bytes
        self.max_lag_seconds = max_lag_seconds
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "primary_conn_id": self.primary_conn_id,
                "standby": self.standby,
                "max_lag_bytes": self.max_lag_bytes,
                "max_lag_seconds": self.max_lag_seconds,
                "poll_interval": self.poll_interval,
            },
        )

    async def _conninfo(self) -> str:
        from continuity.hooks.postgres_node import PostgresNodeHook

        def resolve() -> str:
            return PostgresNodeHook(postgres_conn_id=self.primary_conn_id).get_node().conninfo

        return await sync_to_async(resolve)()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        info = await self._conninfo()
        while True:
            try:
                row = await standby_replication_async(info, self.standby)
            except Exception as exc:  # the primary may be restarting: keep waiting, the timeout bounds us
                self.log.info("cannot read pg_stat_replication yet (%s): retrying in %.0fs", type(exc).__name__, self.poll_interval)
            else:
                ok, reason = lag_verdict(row, standby=self.standby, max_lag_bytes=self.max_lag_bytes,
                                         max_lag_seconds=self.max_lag_seconds)
                self.log.info("%s", reason)
                if ok:
                    yield TriggerEvent({"status": "success", "standby": self.standby, "reason": reason,
                                        "lag_bytes": row.lag_bytes if row else None})
                    return
            await asyncio.sleep(self.poll_interval)
