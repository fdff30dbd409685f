"""PostgresNodeHook: the replication-aware questions every DR DAG asks a PostgreSQL node."""

from __future__ import annotations

from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

from psycopg.conninfo import make_conninfo

from continuity.backup.full import NodeAddress
from continuity.postgres.node import (
    ArchiverStatus,
    PostgresNode,
    ReplicationSlot,
    StandbyReplication,
    WalReceiver,
)


class PostgresNodeHook(PostgresHook):
    """A PostgresHook that also answers role, timeline, LSN, replication and archiver questions.

    The queries live in the Airflow-free core (:class:`continuity.postgres.node.PostgresNode`); this hook
    only hands it the parameters the provider's own ``get_conn()`` connects with, so everything the
    provider supports on a connection (SSL files, ``options``, ``target_session_attrs``, IAM tokens)
    holds for the DR DAGs too.

    :param postgres_conn_id: the connection of the node (see the policy's ``topology.nodes``).
    :param node_name: the name used in messages; defaults to the connection id.
    """

    hook_name = "Continuity PostgreSQL node"

    def __init__(self, *args: Any, node_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._node_name = node_name
        self._describing = False

    def _create_connection(self, conn_args: dict[str, Any]) -> Any:
        # get_conn() resolves the connection (IAM token, extras) and ends here; while describing, the
        # arguments are the answer and no connection is opened.
        if self._describing:
            return dict(conn_args)
        return super()._create_connection(conn_args)

    def connection_params(self) -> dict[str, str]:
        """The libpq parameters the provider's ``get_conn()`` would connect with, without connecting."""
        self._describing = True
        try:
            conn_args = self.get_conn()
        finally:
            self._describing = False
            self.conn = None
        # A cursor factory is psycopg's business, not a libpq parameter.
        return {key: str(value) for key, value in conn_args.items()
                if value is not None and key not in ("cursor_factory", "row_factory")}

    def get_node(self) -> PostgresNode:
        return PostgresNode(name=self._node_name or self.get_conn_id(),
                            conninfo=make_conninfo(**self.connection_params()))

    def get_node_address(self, name: str) -> NodeAddress:
        """Where and as whom a backup tool connects (the password goes to its environment only)."""
        params = self.connection_params()
        return NodeAddress(name=name, host=params.pop("host", "localhost"), port=int(params.pop("port", 5432)),
                           user=params.pop("user", "postgres"), password=params.pop("password", None),
                           params={k: v for k, v in params.items() if k != "dbname"})

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
