"""WalArchivedTrigger: waits in the triggerer until the primary's archiver has archived a segment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from airflow.triggers.base import BaseTrigger, TriggerEvent

from continuity.postgres.node import archiver_async
from continuity.backup.wal import ArchiverFailing, segment_archived


class WalArchivedTrigger(BaseTrigger):
    """Poll pg_stat_archiver until `segment` (or a later one) is archived; stop at once, with the
    reason, when the archiver is failing.

    Only the connection id is serialized (never the password): the conninfo is resolved in the
    triggerer. Connection errors are logged and retried; the sensor's timeout bounds the wait.

    :param conn_id: connection of the primary.
    :param node: the primary's node name, for messages.
    :param segment: the WAL file name to wait for.
    :param poll_interval: seconds between polls.
    """

    def __init__(self, *, conn_id: str, node: str, segment: str, poll_interval: float = 1.0) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.node = node
        self.segment = segment
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"conn_id": self.conn_id, "node": self.node, "segment": self.segment,
                 "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from continuity.hooks.postgres_node import PostgresNodeHook

        info = await sync_to_async(lambda: PostgresNodeHook(postgres_conn_id=self.conn_id).get_node().conninfo)()
        while True:
            try:
                status = await archiver_async(info)
            except Exception as exc:  # the primary may be restarting: keep waiting, the timeout bounds us
                self.log.info("cannot read pg_stat_archiver yet (%s): retrying in %.0fs", type(exc).__name__,
                              self.poll_interval)
            else:
                try:
                    done, reason = segment_archived(status, self.segment, node=self.node)
                except ArchiverFailing as exc:
                    yield TriggerEvent({"status": "failing", "reason": str(exc), "segment": self.segment})
                    return
                self.log.info("%s", reason)
                if done:
                    yield TriggerEvent({"status": "archived", "reason": reason, "segment": self.segment})
                    return
            await asyncio.sleep(self.poll_interval)
