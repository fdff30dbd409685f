"""Operators of dr_wal_archive: close the hour's WAL segment, ship the spool, prove there is no gap."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.dag_defaults import WAL_SPOOL_POOL
from continuity.operators.base import ContinuityBackupOperator, ContinuityOperator
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.operators.health import WAL_SPOOL_ENV_VAR
from continuity.policy.model import format_duration
from continuity.backup.wal import WalConflict, archive_lag, find_gaps, ship_spool
from continuity.storage.locations import StorageError
from continuity.storage.walindex import IndexRefresh, refresh_index


class SwitchWalOperator(ContinuityOperator):
    """Force a WAL switch on the primary so the period is closed; returns the closed segment's name
    (a `WalArchivedSensor` then waits for the archiver without holding a worker slot)."""

    def execute(self, context: Context) -> str:
        primary = self.policy.topology.primary
        node = PostgresNodeHook(postgres_conn_id=primary.conn_id, node_name=primary.name).get_node()
        closed = node.query_one("SELECT pg_walfile_name(pg_switch_wal()) AS name")["name"]
        self.log.info("switched WAL on %s: segment %s is closed", primary.name, closed)
        return closed


class ShipWalOperator(ContinuityBackupOperator):
    """Ship every completed file of the archive spool to every location and empty the spool.

    :param spool_dir: the archive spool (default: $CONTINUITY_WAL_SPOOL).
    """

    template_fields: Sequence[str] = (*ContinuityBackupOperator.template_fields, "spool_dir")
    ui_color = "#fdebd0"

    def __init__(self, *, spool_dir: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("pool", WAL_SPOOL_POOL)
        super().__init__(**kwargs)
        self.spool_dir = spool_dir

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook()
        policy = hook.policy
        spool = Path(self.spool_dir or os.environ.get(WAL_SPOOL_ENV_VAR, ""))
        if not spool.is_dir():
            raise AirflowFailException(f"the WAL spool {spool} is not a directory (set spool_dir or ${WAL_SPOOL_ENV_VAR})")
        primary = PostgresNodeHook(postgres_conn_id=policy.topology.primary.conn_id,
                                   node_name=policy.topology.primary.name).get_node()
        archiver = primary.archiver()
        if archiver.failing:
            raise AirflowFailException(
                f"pg_stat_archiver on {primary.name} shows a new failure: {archiver.last_failed_wal} at "
                f"{archiver.last_failed_time:%Y-%m-%d %H:%M:%S %Z} ({archiver.failed_count} in total); "
                f"fix archive_command before WAL piles up on the primary")
        try:
            result = ship_spool(spool, keyring=hook.get_keyring(), locations=hook.get_locations(),
                                required=hook.required_locations(), report=self.log.info)
        except WalConflict as exc:
            raise AirflowFailException(f"ALARM: {exc}") from exc
        self.log.info("shipped %d WAL files, %d were already shipped, %d copies replicated",
                      len(result.shipped), len(result.already_shipped), len(result.replicated))
        lag = archive_lag(result.newest.finished_at if result.newest else None)
        if lag is not None:
            for name, category in policy.data_categories.items():
                verdict = "within" if lag <= category.rpo.target.total_seconds() else "OVER"
                self.log.info("archive lag %.0fs is %s the RPO target of %s (%s)", lag, verdict, name,
                              format_duration(category.rpo.target))
        remaining = [p for p in spool.iterdir() if not p.name.startswith(".")]
        if len(remaining) > policy.health_monitor.max_spool_files:
            raise AirflowFailException(f"the WAL spool still holds {len(remaining)} files after shipping, over the "
                                       f"limit of {policy.health_monitor.max_spool_files}: shipping falls behind")
        return {"shipped": result.shipped, "already_shipped": result.already_shipped, "replicated": result.replicated}


class RefreshWalIndexOperator(ContinuityBackupOperator):
    """Bring every location's WAL index in line with its manifests (compared by checksum, entry by entry)
    so restores plan from a few packs. An unreachable optional location is left out; an unreachable
    required one, or an unauthentic manifest, fails the task after every location is done."""

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook()
        catalog = hook.get_catalog()
        required = hook.required_locations()
        refreshed: dict[str, IndexRefresh] = {}
        problems: list[str] = []
        for name, location in catalog.locations.items():
            try:
                refreshed[name] = refresh_index(location, catalog.keyring, report=self.log.info)
            except StorageError as exc:
                if name in required:
                    problems.append(str(exc))
                else:
                    self.log.warning("optional location %s left out: %s", name, exc)
        problems += [p for r in refreshed.values() for p in r.problems]
        if problems:
            raise AirflowFailException(f"{len(problems)} WAL index problems (unreachable required locations, "
                                       f"unauthentic manifests or packs): " + "; ".join(problems[:5]))
        return {name: r.model_dump() for name, r in refreshed.items()}


class WalContinuityOperator(ContinuityBackupOperator):
    """Fail when any required location's WAL sequence has a gap, per timeline, from the oldest kept base backup."""

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook()
        catalog = hook.get_catalog()
        summary: dict[str, Any] = {}
        problems: list[str] = []
        for name in sorted(hook.required_locations()):
            wal = [m.source.get("wal_file", "") for m in catalog.list(kind="wal", location=name)]
            bases = [m for m in catalog.list(kind="physical", location=name) if m.source.get("start_wal_file")]
            since = bases[0].source["start_wal_file"] if bases else None
            gaps = find_gaps(wal, since=since)
            segments = [w for w in wal if len(w) == 24]
            summary[name] = {"segments": len(segments), "newest": max(segments, default=None), "gaps": gaps}
            if gaps:
                problems.append(f"location {name}: WAL gap, first missing segment {gaps[0]} ({len(gaps)} missing)")
            else:
                start = f"from base backup start {since}" if since else "from the first shipped segment"
                self.log.info("location %s: %d WAL segments with no gap %s to %s", name, len(segments), start,
                              summary[name]["newest"])
        if catalog.problems:
            problems.extend(catalog.problems)
        if problems:
            raise AirflowFailException("; ".join(problems))
        return summary
