"""Operators of dr_drill: mark the primary, then rebuild from the DR region and measure."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.drill import REPORT_PREFIX, commit_marker, failure_result, render_markdown, run_drill
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.operators.base import ContinuityBackupOperator
from continuity.restore import RestoreError, scratch_prefix
from continuity.restore_test import store_report


class StartDrillOperator(ContinuityBackupOperator):
    """Validate the params, note the drill start, and commit the drill marker row on the primary."""

    template_fields = (*ContinuityBackupOperator.template_fields, "include_switchover")

    def __init__(self, *, include_switchover: Any = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.include_switchover = include_switchover

    def execute(self, context: Context) -> dict[str, str]:
        if str(self.include_switchover).lower() in ("true", "1", "yes"):
            raise AirflowFailException("include_switchover is not available yet: the live switchover part of the "
                                       "drill arrives with the dr_failover DAG; run the drill without it")
        started = datetime.now(timezone.utc)
        policy = self.hook().policy
        entry = PostgresNodeHook(postgres_conn_id=policy.topology.entry_point.conn_id)
        conn = entry.get_connection(policy.topology.entry_point.conn_id)
        app = entry.get_node().conninfo
        drill_id = re.sub(r"[^A-Za-z0-9._-]", "_", context["run_id"])
        committed = commit_marker(app, drill_id)
        self.log.info("drill %s started at %s; marker committed at %s through %s", drill_id, started.isoformat(),
                      committed.isoformat(), conn.host)
        return {"drill_id": drill_id, "started_at": started.isoformat(), "marker_committed_at": committed.isoformat(),
                "database": conn.schema or policy.topology.databases[0]}


class RebuildAndMeasureOperator(ContinuityBackupOperator):
    """Rebuild from DR-region backups alone, validate, measure RTO/RPO per phase, write the report."""

    def execute(self, context: Context) -> dict[str, Any]:
        start = context["ti"].xcom_pull(task_ids="start_drill")
        hook = self.hook()
        catalog = hook.get_catalog()
        required = [catalog.locations[n] for n in sorted(hook.required_locations())]
        started_at = datetime.fromisoformat(start["started_at"])
        try:
            result = run_drill(catalog=catalog, policy=hook.policy, drill_id=start["drill_id"], started_at=started_at,
                               marker_committed_at=datetime.fromisoformat(start["marker_committed_at"]),
                               database=start["database"], report=self.log.info,
                               scratch_prefix=scratch_prefix(context["run_id"]))
        except RestoreError as exc:
            failed = failure_result(drill_id=start["drill_id"], started_at=started_at, error=str(exc))
            for key in store_report(failed, required, name=start["drill_id"], prefix=REPORT_PREFIX, render=render_markdown):
                self.log.info("failure report written to %s", key)
            raise AirflowFailException(f"drill failed: {exc}") from exc
        for key in store_report(result, required, name=start["drill_id"], prefix=REPORT_PREFIX, render=render_markdown):
            self.log.info("report written to %s (+ .md)", key)
        self.log.info("RTO %.1f s (phases %s); RPO %.1f s (marker %s)", result["rto_seconds"], result["phases"],
                      result["rpo_seconds"], "recovered" if result["marker_recovered"] else "LOST")
        for objective in result["objectives"]:
            verdict = "pass" if objective["within_target"] else ("within maximum" if objective["within_maximum"] else "FAIL")
            self.log.info("%s: %.1f s against target %s: %s", objective["objective"], objective["measured_seconds"],
                          objective["target"], verdict)
        if not result["success"]:
            raise AirflowFailException("drill validation failed: " + "; ".join(result["failed_checks"] or ["no checks ran"]))
        return result
