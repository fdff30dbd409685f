"""Operators of dr_backup_validation: verify and repair copies, alarm on stale data, apply retention."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from continuity.objects.audit import inventory

from continuity.objects.ledger import load_checkpoint

from continuity.objects.replication import stale_object_categories
from continuity.operators.base import ContinuityBackupOperator, ContinuityOperator
from continuity.policy.model import format_duration
from continuity.backup.validation import (apply_retention, backup_schedules, deep_sample, plan_retention, read_holds,
                                   stale_backup_kinds, stale_categories, validate_copies)


class CatchUpOperator(ContinuityBackupOperator):
    """Copy every degraded backup and WAL segment into the required location it is missing from, once that
    location answers (continuity.backup.catchup). Succeeds while a location is still missing backups for less
    than the policy's storage.max_degraded (the health monitor warns meanwhile); fails past it."""

    ui_color = "#d6eaf8"

    def execute(self, context: Context) -> dict[str, Any]:
        from continuity.backup.catchup import catch_up

        hook = self.hook()
        result = catch_up(hook.get_locations(), hook.get_keyring(), report=self.log.info)
        bound = hook.policy.storage.max_degraded
        now = datetime.now(timezone.utc)
        too_long = {name: now - since for name, since in result.oldest_missing.items() if now - since > bound}
        if too_long:
            raise AirflowFailException(
                "; ".join(f"location {name} has been missing backups for "
                          f"{format_duration(timedelta(seconds=int(age.total_seconds())))}, over storage.max_degraded "
                          f"of {format_duration(bound)} ({result.why.get(name, 'not tried')})"
                          for name, age in sorted(too_long.items()))
                + ". HINT: bring the location back; this task copies what it lacks as soon as it answers")
        if result.degraded:
            self.log.warning("still degraded, within storage.max_degraded of %s: %s", format_duration(bound),
                             result.summary())
        return result.model_dump(mode="json")


class VerifyAndRepairOperator(ContinuityBackupOperator):
    """Shallow-verify every copy everywhere, deep-verify the newest of each kind and a random sample
    (size from the policy, stable per run), and repair missing or bad required copies from a good one."""

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook()
        catalog = hook.get_catalog()
        everything = catalog.list()
        deep_ids = deep_sample(everything, size=hook.policy.validation.deep_verify_sample, seed=context["run_id"])
        self.log.info("%d backups; deep verification for %s", len(everything), ", ".join(sorted(deep_ids)) or "none")
        report = validate_copies(catalog, required=hook.required_locations(), deep_ids=deep_ids, report=self.log.info)
        problems = [*catalog.problems, *(f"{f.backup_id} in {f.location}: {f.reason}" for f in report.unrepaired)]
        if problems:
            raise AirflowFailException(f"{len(problems)} problems remain after repair: " + "; ".join(problems))
        return report.to_dict() | {"deep": sorted(deep_ids)}


class StaleBackupAlarmOperator(ContinuityBackupOperator):
    """Fail when the newest backup proving a data category is older than that category's RPO maximum,
    or when a scheduled backup kind's newest backup is older than its period plus the policy's grace."""

    def execute(self, context: Context) -> list[str]:
        hook = self.hook()
        manifests = hook.get_catalog().list()
        state = {name: loc for name, loc in hook.get_locations().items() if name in hook.required_locations()}
        checkpoints = {name: load_checkpoint(name, state)
                       for name in (hook.policy.objects.categories if hook.policy.objects else {})}
        alarms = [*stale_categories(hook.policy, manifests), *stale_backup_kinds(hook.policy, manifests),
                  *stale_object_categories(hook.policy, checkpoints)]
        if alarms:
            raise AirflowFailException("STALE BACKUPS: " + "; ".join(alarms))
        self.log.info("every data category has a backup within its RPO maximum and every scheduled backup kind "
                      "(%s) is within its period plus %s", ", ".join(backup_schedules(hook.policy)),
                      format_duration(hook.policy.backups.freshness_grace))
        return alarms


class VerifyObjectsOperator(ContinuityBackupOperator):
    """The daily inventory diff of the application's objects: every current source version against
    every replica (present, same size), a random sample downloaded to check its SHA-256 (stable per
    run), and anything missing or different copied again. Fails when something could not be repaired.

    :param deep_sample: objects to download per category and replica.
    """

    def __init__(self, *, deep_sample: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deep_sample = deep_sample

    def execute(self, context: Context) -> list[dict[str, Any]]:
        hook = self.hook()
        if hook.policy.objects is None:
            raise AirflowSkipException("the policy has no objects section")
        found = []
        for category in hook.policy.objects.categories:
            found += inventory(hook.get_replicator(category, report=self.log.info), deep_sample=self.deep_sample,
                               seed=context["run_id"], repair=True)
        unrepaired = [f"{f.category} in {f.replica}: {problem}" for f in found for problem in f.unrepaired]
        if unrepaired:
            raise AirflowFailException(f"{len(unrepaired)} objects are missing or different in a replica and could not "
                                       f"be copied again: " + "; ".join(unrepaired[:5]))
        return [f.model_dump(mode="json") for f in found]


class RetentionOperator(ContinuityBackupOperator):
    """Apply the policy's retention in every location, logging each deletion with its reason.

    :param dry_run: print the plan, delete nothing (templated: the DAG's `dry_run_retention` param).
    """

    template_fields: Sequence[str] = (*ContinuityBackupOperator.template_fields, "dry_run")

    def __init__(self, *, dry_run: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dry_run = dry_run

    def execute(self, context: Context) -> dict[str, list[str]]:
        hook = self.hook()
        policy = hook.policy
        dry_run = str(self.dry_run).lower() in ("true", "1", "yes")
        catalog = hook.get_catalog()
        deleted: dict[str, list[str]] = {}
        for location_policy in policy.storage.locations:
            location = catalog.locations[location_policy.name]
            manifests = catalog.manifests_in(location.name)
            offsite = location_policy.region != policy.topology.primary_region
            decisions = plan_retention(policy, manifests, offsite=offsite, holds=read_holds(location))
            deleted[location.name] = apply_retention(location, decisions, dry_run=dry_run, keyring=catalog.keyring,
                                                     report=self.log.info)
            self.log.info("location %s: keeping %d, %s %d", location.name, sum(d.keep for d in decisions),
                          "would delete" if dry_run else "deleted", len(deleted[location.name]))
        return deleted


class DatabaseIntegrityOperator(ContinuityOperator):
    """The requirements' daily `database_integrity` check: PostgreSQL's amcheck reads and verifies every table page
    and every B-tree index of the policy's databases (continuity.postgres.integrity), on a standby of the DR
    region so the primary's load is untouched. Fails naming each corrupt relation: a corrupt page would otherwise
    be copied into every backup after it.

    :param node: the node to check (default: a standby in the DR region, else any standby, else the primary).
    """

    template_fields: Sequence[str] = ("policy_path", "node")
    ui_color = "#d5f5e3"

    def __init__(self, *, node: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node = node

    def execute(self, context: Context) -> dict[str, Any]:
        from psycopg.conninfo import make_conninfo

        from continuity.hooks.postgres_node import PostgresNodeHook
        from continuity.postgres.integrity import AmcheckMissing, IntegrityCheckError, check_integrity, integrity_node
        from continuity.postgres.node import PostgresNode

        policy = self.policy
        name = self.node or integrity_node(policy)
        node = policy.topology.node(name)
        params = PostgresNodeHook(postgres_conn_id=node.backup_conn_id or node.conn_id,
                                  node_name=name).connection_params()

        def node_for(database: str) -> PostgresNode:
            return PostgresNode(name=name, conninfo=make_conninfo(**{**params, "dbname": database}))

        try:
            report = check_integrity(node_for, policy.topology.databases, node_name=name, progress=self.log.info)
        except AmcheckMissing as exc:
            raise AirflowSkipException(f"database integrity not measured: {exc}") from exc
        except IntegrityCheckError as exc:
            raise AirflowFailException(f"the integrity check could not run: {exc}") from exc
        for problem in report.problems:
            self.log.error("CORRUPT %s.%s (%s): %s", problem.database, problem.relation, problem.kind, problem.detail)
        if not report.ok:
            raise AirflowFailException(
                f"{report.summary()}. HINT: the backups taken since the page went bad hold it too: restore the "
                f"relation from an older backup or rebuild the node from a healthy one (docs/runbooks/restore.md)")
        self.log.info("%s", report.summary())
        return report.model_dump(mode="json")
