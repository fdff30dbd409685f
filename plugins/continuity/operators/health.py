"""Operators of dr_health_monitor: one per thing an SRE checks, and one that weighs the findings.

Each check operator logs one sentence per finding and returns its findings through XCom; it
does not fail on an unhealthy finding, so the assessment always sees every check. The
assessment applies the requirements' weighted failure score and fails the run with a summary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import Context, Variable
from airflow.sdk.exceptions import AirflowFailException

from continuity.health.checks import (
    Assessment,
    Check,
    assess,
    check_archiver,
    check_commit_latency,
    check_configuration,
    change_seen_by_checks,
    check_entry_point,
    during_topology_change,
)
from continuity.hooks.health import HealthProbeHook, node_for
from continuity.incidents.health_alerts import CAUSE_PREFIX, alert_requests, resolve_requests
from continuity.policy.model import Policy, format_duration
from continuity.operators.base import ContinuityOperator
from continuity.health.viewpoints import observe_primary, viewpoint_variable

WAL_SPOOL_ENV_VAR = "CONTINUITY_WAL_SPOOL"


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
    """The primary accepts writes; each standby is in recovery and streams within lag and RPO limits;
    each node answers within the policy's latency limit."""

    def checks(self, policy: Policy) -> list[Check]:
        hook = HealthProbeHook(policy_path=self.policy_path)
        return hook.database_checks(policy) + hook.latency_checks(policy)


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
    """The application's entry point (PgBouncer) answers and leads to a writable primary, and a commit through it
    is acknowledged within health_monitor.max_commit_latency (the synchronous standbys answer)."""

    def checks(self, policy: Policy) -> list[Check]:
        entry = policy.topology.entry_point
        node = node_for(entry.conn_id, f"{entry.kind} ({entry.conn_id})")
        checks = check_entry_point(node)
        return checks + check_commit_latency(policy, node) if all(c.healthy for c in checks) else checks


class ApplicationHealthOperator(HealthCheckOperator):
    """Every application instance of the serving region answers /health and each business function's
    synthetic transaction succeeds there (the serving region: the current primary's)."""

    def checks(self, policy: Policy) -> list[Check]:
        return HealthProbeHook(policy_path=self.policy_path).application_checks(policy)


class StorageHealthOperator(HealthCheckOperator):
    """Every storage location of the policy is reachable (S3 bucket head, or a writable directory), and the
    serving region's application bucket."""

    def checks(self, policy: Policy) -> list[Check]:
        return HealthProbeHook(policy_path=self.policy_path).storage_checks(policy, application_buckets=True)


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
        findings = self._during_a_change(policy, findings, checks_started=_checks_started(context))
        assessment = assess(policy, findings)
        result = assessment.to_dict()
        context["ti"].xcom_push(key="assessment", value=result)
        source = f"dr_health_monitor run {context['run_id']}"
        from continuity.alerts.callbacks import report_cause
        from continuity.hooks.incident import ContinuityIncidentHook

        incidents = ContinuityIncidentHook(follow_topology=False)  # one for every cause this run reports
        self._report_checks(policy, assessment, source=source, incidents=incidents)
        if assessment.disaster:
            from continuity.incidents.records import IncidentRequest

            report_cause(IncidentRequest(
                severity="critical", title=f"Disaster assessment: failure score {assessment.score}",
                description=assessment.summary(), functions=sorted(policy.functions_on_the_database()),
                cause_key=f"disaster:{policy.topology.primary.name}", source=source), hook=incidents)
        if not assessment.healthy:
            raise AirflowFailException(assessment.summary())
        self.log.info("%s", assessment.summary())
        return result

    def _during_a_change(self, policy: Policy, findings: list[Check], *, checks_started: datetime) -> list[Check]:
        """While a drill's or dr_failover's switchover holds the cluster lease, or gave it back after this run's
        checks began, what it disturbs is expected."""
        from continuity.hooks.failover import FailoverHook

        try:
            lease = FailoverHook(policy_path=self.policy_path).get_lease()
            held = lease.holder()
            ended = lease.last_released() if held is None else None
        except Exception as exc:  # storage unreachable: judge the checks as they are
            self.log.warning("cannot read the cluster lease (%s): no topology change is assumed", exc)
            return findings
        now = datetime.now(timezone.utc)
        seen = change_seen_by_checks(
            held=(held.describe(), held.expires_at - policy.failover.lease_ttl) if held is not None else None,
            ended=(ended.describe(), ended.released_at) if ended is not None else None,
            checks_started=checks_started, now=now)
        if seen is None:
            return findings
        grace = policy.failover.step_timeout
        marked = during_topology_change(findings, change=seen.change, active_since=seen.active_since,
                                        now=seen.judged_at, grace=grace)
        expected = [c for c, before in zip(marked, findings) if c.healthy and not before.healthy]
        if expected:
            self.log.warning("%s (active %s before it was judged): %d failing checks are expected while it "
                             "changes the cluster and count for nothing (no incident, no automatic failover); after "
                             "failover.step_timeout (%s) without renewal they count again: %s", seen.change,
                             format_duration(timedelta(seconds=int((seen.judged_at - seen.active_since)
                                                                   .total_seconds()))),
                             len(expected), format_duration(grace), "; ".join(c.subject for c in expected))
        elif seen.judged_at - seen.active_since > grace:
            self.log.warning("%s holds the cluster lease but has not renewed it for over failover.step_timeout (%s): "
                             "its run may have died; checks count as they are", seen.change, format_duration(grace))
        return marked

    def _report_checks(self, policy: Policy, assessment: Assessment, *, source: str, incidents: Any) -> None:
        """Each failing check's incident cause, and a resolution for each check incident now green long enough.
        Never fails the assessment: a cause that cannot be left is logged (the red run still shows it)."""
        from continuity.alerts.callbacks import report_cause

        requests = alert_requests(policy, assessment, source=source)
        try:
            open_checks = [incident for incident in incidents.get_store().open_incidents()
                           if incident.cause_key.startswith(CAUSE_PREFIX)] if incidents.policy.communication else []
        except Exception as exc:  # storage unreachable: the alerts still go (report_cause journals them)
            self.log.warning("cannot read the open incidents (%s): no check incident is resolved this time", exc)
            open_checks = []
        requests += resolve_requests(policy, assessment, open_checks, now=datetime.now(timezone.utc), source=source)
        for request in requests:
            if request.action == "resolve":
                self.log.info("RESOLVED %s (incident %s): %s", request.cause_key, request.incident_id,
                              request.description)
            else:
                self.log.warning("ALERT %s (%s): %s", request.cause_key, request.severity, request.description)
            report_cause(request, hook=incidents)


class ViewpointProbeOperator(ContinuityOperator):
    """Look at the primary from `region` (run it on that region's queue) and record what was seen, with its
    time, in the Variable `continuity_viewpoint_<region>`: the automatic failover's second viewpoint. Never
    fails on what it sees (an unreachable primary is the observation); a region that is lost records nothing.

    :param region: the region this task runs in.
    """

    ui_color = "#e8f6f3"

    def __init__(self, *, region: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.region = region

    def execute(self, context: Context) -> dict[str, Any]:
        primary = self.policy.topology.primary
        observation = observe_primary(self.region, node_for(primary.conn_id, primary.name))
        Variable.set(viewpoint_variable(self.region), observation.model_dump_json())
        (self.log.info if observation.writable else self.log.warning)("from %s: %s", self.region, observation.reason)
        return observation.model_dump(mode="json")


def _checks_started(context: Context) -> datetime:
    """When this run's checks began: its start (they are its first tasks). Unknown: now, so that only a change
    still holding the lease can excuse a failure (never one that ended before)."""
    started = getattr(context.get("dag_run"), "start_date", None)
    return started if isinstance(started, datetime) else datetime.now(timezone.utc)
