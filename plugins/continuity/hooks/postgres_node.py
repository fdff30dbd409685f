"""PostgresNodeHook: the replication-aware questions every DR DAG asks a PostgreSQL node."""

from __future__ import annotations

from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

from continuity.postgres import (
    ArchiverStatus,
    PostgresNode,
    ReplicationSlot,
    StandbyReplication,
    WalReceiver,
    conninfo,
)


class PostgresNodeHook(PostgresHook):
    """A PostgresHook that also answers role, timeline, LSN, replication and archiver questions.

    The queries live in the Airflow-free core (:class:`continuity.postgres.PostgresNode`); this hook
    only turns an Airflow connection into the node's conninfo.

    :param postgres_conn_id: the connection of the node (see the policy's ``topology.nodes``).
    :param node_name: the name used in messages; defaults to the connection's ``extra.node`` or id.
    """

    hook_name = "Continuity PostgreSQL node"

    def __init__(self, *args: Any, node_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._node_name = node_name

    def get_node(self) -> PostgresNode:
        conn = self.get_connection(self.get_conn_id())
        extra = conn.extra_dejson
        info = conninfo(
            host=conn.host or "localhost",
            port=conn.port or 5432,
            user=conn.login or "postgres",
            password=conn.password,
            dbname=self.database or conn.schema or "postgres",
            **({"sslmode": extra["sslmode"]} if "sslmode" in extra else {}),
        )
        return PostgresNode(name=self._node_name or extra.get("node") or self.get_conn_id(), conninfo=info)

    def is_in_recovery(self) -> bool:
        return self.get_node().is_in_recovery()

    def timeline(self) -> int:
        return self.get_node().timeline()

    def lsns(self) -> dict[str, Any]:
        return self.get_node().lsns()

    def replication(self) -> list[StandbyReplication]:
        return self.get_node().replication()

    def standby_replication(self, application_name: str) -> StandbyReplication | None:
        return self.get_node().standby_replication(application_name)

    def wal_receiver(self) -> WalReceiver | None:
        return self.get_node().wal_receiver()

    def replication_slots(self) -> list[ReplicationSlot]:
        return self.get_node().replication_slots()

    def archiver(self) -> ArchiverStatus:
        return self.get_node().archiver()
