"""Operators of dr_full_backup: a snapshot-consistent logical dump per database, and a base backup."""

from __future__ import annotations


from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.storage.archive import ArchiveError
from continuity.backup.full import NodeAddress, logical_backup, physical_backup
from continuity.operators.base import ContinuityBackupOperator
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.storage.keys import KeyringError
from continuity.policy.model import Node


def node_address(node: Node) -> NodeAddress:
    return PostgresNodeHook(postgres_conn_id=node.backup_conn_id or node.conn_id).get_node_address(node.name)


class _FullBackupOperator(ContinuityBackupOperator):
    ui_color = "#fdebd0"

    @staticmethod
    def stamp(context: Context) -> str:
        moment = context.get("logical_date") or context["dag_run"].run_after
        return f"{moment:%Y%m%dT%H%M%SZ}"


class LogicalBackupOperator(_FullBackupOperator):
    """pg_dump of every application database of the policy in an exported snapshot, with exact row counts.

    Backup ids are ``logical-<database>-<logical date>``: a rerun for the same date finds its
    backups and does nothing. Returns the backup ids.
    """

    def execute(self, context: Context) -> list[str]:
        hook = self.hook()
        policy = hook.policy
        node = node_address(policy.topology.primary)
        ids = []
        for database in policy.topology.databases:
            backup_id = f"logical-{database}-{self.stamp(context)}"
            ids.append(backup_id)
            if hook.exists_everywhere(backup_id):
                self.log.info("backup %s already exists in every required location: nothing to do", backup_id)
                continue
            try:
                manifest = logical_backup(node=node, database=database, keyring=hook.get_keyring(),
                                          locations=list(hook.get_locations().values()),
                                          required=hook.required_locations(), backup_id=backup_id, report=self.log.info,
                                          compression=policy.backups.full.compression)
            except (KeyringError, ArchiveError) as exc:
                raise AirflowFailException(str(exc)) from exc
            self.log.info("database %s: %d tables, %s rows, schema fingerprint %s…", database,
                          len(manifest.details["row_counts"]), f"{sum(manifest.details['row_counts'].values()):,}",
                          manifest.details["schema_fingerprint"][:16])
        return ids


class PhysicalBackupOperator(_FullBackupOperator):
    """A base backup (tar, WAL included, PostgreSQL's backup_manifest inside) from the node the policy names.

    Taken from ``backups.full.backup_from_standby`` when set (sparing the primary), else the primary.
    Returns the backup id ``physical-<node>-<logical date>``.
    """

    def execute(self, context: Context) -> str:
        hook = self.hook()
        policy = hook.policy
        source = policy.topology.node(policy.backups.full.backup_from_standby or policy.topology.primary.name)
        backup_id = f"physical-{source.name}-{self.stamp(context)}"
        if hook.exists_everywhere(backup_id):
            self.log.info("backup %s already exists in every required location: nothing to do", backup_id)
            return backup_id
        try:
            manifest = physical_backup(node=node_address(source), keyring=hook.get_keyring(),
                                       locations=list(hook.get_locations().values()),
                                       required=hook.required_locations(), backup_id=backup_id, report=self.log.info)
        except (KeyringError, ArchiveError) as exc:
            raise AirflowFailException(str(exc)) from exc
        self.log.info("base backup of %s: WAL %s to %s on timeline %s", source.name, manifest.source["start_lsn"],
                      manifest.source["stop_lsn"], manifest.source["timeline"])
        return backup_id
