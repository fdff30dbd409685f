"""Operators of dr_health_monitor: one per thing an SRE checks, and one that weighs the findings.

Each check operator logs one sentence per finding and returns its findings through XCom; it
does not fail on an unhealthy finding, so the assessment always sees every check. The
assessment applies the requirements' weighted failure score and fails the run with a summary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.health import (
    Check,
    assess,
    check_application,
    check_archiver,
    check_configuration,
    check_entry_point,
    check_primary,
    check_standbys,
    check_storage,
)
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.policy import Policy
from continuity.operators.base import ContinuityOperator
from continuity.postgres import PostgresNode

WAL_SPOOL_ENV_VAR = "CONTINUITY_WAL_SPOOL"


def node_for(conn_id: str, name: str) -> PostgresNode:
    return PostgresNodeHook(postgres_conn_id=conn_id, node_name=name).get_node()


class HealthCheckOperator(ContinuityOperator):
    """Base of the check operators: load the policy, run `checks()`, log and return the findings.

    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    """

    ui_color = "#e8f6f3"

    def checks(self, policy: Policy) -> list[Check]:
        raise NotImplementedError

    def execute(self, context: Context) -> list[dict[str, Any]]:
        findings = self.checks(self.policy)
        for check in findings:
            (self.log.info if check.healthy else self.log.warning)("%s %s", "ok:  " if check.healthy else "FAIL:", check.reason)
        return [check.to_dict() for check in findings]


class DatabaseHealthOperator(HealthCheckOperator):
    """The primary accepts writes; each standby is in recovery and streams within lag and RPO limits."""

    def checks(self, policy: Policy) -> list[Check]:
        topology = policy.topology
        primary = node_for(topology.primary.conn_id, topology.primary.name)
        standbys = {node.name: node_for(node.conn_id, node.name) for node in topology.standbys}
        return check_primary(policy, primary) + check_standbys(policy, primary, standbys)


class ArchiverHealthOperator(HealthCheckOperator):
    """pg_stat_archiver shows no new failure and the WAL spool is not piling up.

    :param spool_dir: the archive spool directory when this worker can see it
        (default: $CONTINUITY_WAL_SPOOL; not checked when unset).
    """

    template_fields: Sequence[str] = (*HealthCheckOperator.template_fields, "spool_dir")

    def __init__(self, *, spool_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spool_dir = spool_dir

    def checks(self, policy: Policy) -> list[Check]:
        primary = node_for(policy.topology.primary.conn_id, policy.topology.primary.name)
        spool = self.spool_dir or os.environ.get(WAL_SPOOL_ENV_VAR)
        return check_archiver(policy, primary, Path(spool) if spool else None)


class EntryPointHealthOperator(HealthCheckOperator):
    """The application's entry point (PgBouncer) answers and leads to a writable primary."""

    def checks(self, policy: Policy) -> list[Check]:
        entry = policy.topology.entry_point
        return check_entry_point(node_for(entry.conn_id, f"{entry.kind} ({entry.conn_id})"))


class ApplicationHealthOperator(HealthCheckOperator):
    """Every application instance of the serving region answers /health and each business function's
    synthetic transaction succeeds there (the serving region: the current primary's)."""

    def checks(self, policy: Policy) -> list[Check]:
        from continuity.hooks.application import ApplicationProbeHook

        if policy.application is None:
            return []
        region = policy.topology.primary.region
        return check_application(ApplicationProbeHook(policy=policy, region=region).run())


class StorageHealthOperator(HealthCheckOperator):
    """Every storage location of the policy is reachable (S3 bucket head, or a writable directory)."""

    def checks(self, policy: Policy) -> list[Check]:
        def probe(name: str) -> None:
            location = policy.storage.location(name)
            if location.kind == "s3":
                client = S3Hook(aws_conn_id=location.conn_id, region_name=location.region).get_conn()
                client.head_bucket(Bucket=location.bucket)
            else:
                path = Path(location.path or "")
                if not path.is_dir() or not os.access(path, os.W_OK):
                    raise FileNotFoundError(f"{path} is not a writable directory")

        return check_storage(policy, probe)


class ConfigurationDriftOperator(HealthCheckOperator):
    """The primary's replication settings and slots match the policy."""

    def checks(self, policy: Policy) -> list[Check]:
        return check_configuration(policy, node_for(policy.topology.primary.conn_id, policy.topology.primary.name))


class HealthAssessmentOperator(HealthCheckOperator):
    """Weigh every check's findings; fail with a summary when anything is unhealthy.

    Run it with ``trigger_rule=ALL_DONE``: a check task that crashed counts as a failing check.

    :param check_task_ids: the tasks whose findings to weigh.
    """

    def __init__(self, *, check_task_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_task_ids = list(check_task_ids)

    def execute(self, context: Context) -> dict[str, Any]:
        policy = self.policy
        findings: list[Check] = []
        for task_id in self.check_task_ids:
            reported = context["ti"].xcom_pull(task_ids=task_id)
            if reported is None:
                findings.append(Check("configuration", task_id, False,
                                      f"check task {task_id} did not report its findings (see its log)"))
            else:
                findings.extend(Check.from_dict(item) for item in reported)
        assessment = assess(policy, findings)
        result = assessment.to_dict()
        context["ti"].xcom_push(key="assessment", value=result)
        if assessment.disaster:
            from continuity.alerts.callbacks import report_cause
            from continuity.incidents import IncidentRequest

            report_cause(IncidentRequest(
                severity="critical", title=f"Disaster assessment: failure score {assessment.score}",
                description=assessment.summary(), functions=sorted(policy.functions_on_the_database()),
                cause_key=f"disaster:{policy.topology.primary.name}", source=f"dr_health_monitor run {context['run_id']}"))
        if not assessment.healthy:
            raise AirflowFailException(assessment.summary())
        self.log.info("%s", assessment.summary())
        return result
