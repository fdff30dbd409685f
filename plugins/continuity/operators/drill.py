"""Operators of dr_drill: mark the primary, then rebuild from the DR region and measure."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from continuity.exercises.drill import (REPORT_PREFIX, DrillStart, LiveSwitchoverResult, SwitchoverLeg,
                                       commit_marker_stream, commit_pitr_markers, failure_result, render_markdown,
                                       run_drill)
from continuity.failover.lease import LeaseHeld
from continuity.failover.steps import run_all
from continuity.failover.records import FailoverError, FailoverParams
from continuity.hooks.failover import FailoverHook
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.exercises.loadgen import CommitRecorder
from continuity.operators.base import ContinuityBackupOperator
from continuity.restore.engine import RestoreError, scratch_prefix
from continuity.reports import store_report
from continuity.storage.locations import key_safe


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")


class StartDrillOperator(ContinuityBackupOperator):
    """Validate the params, note the drill start, commit the point-in-time markers, then the marker stream whose
    end is the disaster instant the rebuild measures RPO at."""

    template_fields = (*ContinuityBackupOperator.template_fields, "include_switchover")

    def __init__(self, *, include_switchover: Any = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.include_switchover = include_switchover

    def execute(self, context: Context) -> dict[str, Any]:
        if _truthy(self.include_switchover):
            self.log.info("include_switchover: after the rebuild, the drill switches over to the DR standby and back")
        started = datetime.now(timezone.utc)
        policy = self.hook().policy
        entry = PostgresNodeHook(postgres_conn_id=policy.topology.entry_point.conn_id)
        conn = entry.get_connection(policy.topology.entry_point.conn_id)
        app = entry.get_node().conninfo
        drill_id = key_safe(context["run_id"])
        # The point-in-time markers first: the stream's markers stay the newest rows, what RPO is measured by.
        pitr = commit_pitr_markers(app, drill_id)
        self.log.info("point-in-time check: markers committed at %s and %s; the drill will recover to %s",
                      pitr.before_at.isoformat(), pitr.after_at.isoformat(), pitr.target.isoformat())
        seconds = policy.validation.drill.marker_stream.total_seconds()
        self.log.info("committing markers through %s for %.0f s (validation.drill.marker_stream); the disaster "
                      "instant is its end", conn.host, seconds)
        stream = commit_marker_stream(app, drill_id, seconds=seconds)
        self.log.info("drill %s started at %s; %d markers committed %s .. %s; disaster instant %s: the rebuild uses "
                      "only what the DR region's storage held then", drill_id, started.isoformat(), stream.count,
                      stream.first_at.isoformat(), stream.last_at.isoformat(), stream.disaster_at.isoformat())
        return DrillStart(drill_id=drill_id, started_at=started, stream=stream,
                          database=conn.schema or policy.topology.databases[0], pitr=pitr).model_dump(mode="json")


class RebuildAndMeasureOperator(ContinuityBackupOperator):
    """Rebuild from DR-region backups alone, validate, measure RTO/RPO per phase, write the report."""

    def execute(self, context: Context) -> dict[str, Any]:
        start = _drill_start(context)
        hook = self.hook()
        catalog = hook.get_catalog()
        required = [catalog.locations[n] for n in sorted(hook.required_locations())]
        policy = hook.policy
        application_check = None
        if policy.application is not None and policy.application.service_control is not None:
            from continuity.hooks.application import ApplicationProbeHook

            application_check = ApplicationProbeHook(policy=policy, region=policy.topology.dr_region).verify_database
        try:
            result = run_drill(catalog=catalog, policy=hook.policy, drill_id=start.drill_id, started_at=start.started_at,
                               stream=start.stream, database=start.database, report=self.log.info,
                               object_replicas=hook.get_object_replicas(hook.policy.topology.dr_region),
                               scratch_prefix=scratch_prefix(context["run_id"]), pitr=start.pitr,
                               application_check=application_check)
        except RestoreError as exc:
            failed = failure_result(drill_id=start.drill_id, started_at=start.started_at, error=str(exc))
            for key in store_report(failed, required, name=start.drill_id, prefix=REPORT_PREFIX, render=render_markdown):
                self.log.info("failure report written to %s", key)
            raise AirflowFailException(f"drill failed: {exc}") from exc
        for key in store_report(result, required, name=start.drill_id, prefix=REPORT_PREFIX, render=render_markdown):
            self.log.info("report written to %s (+ .md)", key)
        self.log.info("RTO %.1f s (phases %s); RPO %.1f s: %s", result.rto_seconds, result.phases,
                      result.rpo_seconds, result.rpo_source)
        for objective in result.objectives:
            if objective.measured_seconds is None:
                self.log.info("%s: not measured (target %s)", objective.objective, objective.target)
            else:
                self.log.info("%s: %.1f s against target %s: %s (from: %s)", objective.objective,
                              objective.measured_seconds, objective.target, objective.verdict, objective.source)
        if not result.success:
            raise AirflowFailException("drill validation failed: " + "; ".join(result.failed_checks or ["no checks ran"]))
        return result.model_dump(mode="json")


class LiveSwitchoverOperator(ContinuityBackupOperator):
    """With `include_switchover`: switch over to the DR region's standby and back through the failover
    steps, under a writer that records every acknowledged commit; measure the application-visible
    outage (longest gap between acknowledged commits) and check no acknowledged commit was lost."""

    template_fields = (*ContinuityBackupOperator.template_fields, "include_switchover")

    def __init__(self, *, include_switchover: Any = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.include_switchover = include_switchover

    def execute(self, context: Context) -> dict[str, Any]:
        if not _truthy(self.include_switchover):
            raise AirflowSkipException("include_switchover is false: no live switchover in this drill")
        start = _drill_start(context)
        policy = FailoverHook(policy_path=self.policy_path).policy
        original = policy.topology.primary.name
        target = next((n.name for n in policy.topology.standbys if n.region == policy.topology.dr_region), None)
        if target is None:
            raise AirflowFailException(f"no standby in the DR region {policy.topology.dr_region} to switch over to")
        legs = {}
        failover_hook = FailoverHook(policy_path=self.policy_path)
        try:  # one writer: no dr_failover or exercise may move the cluster while the drill switches it over
            failover_hook.take_lease(run_id=context["run_id"], holder=f"dr_drill run {context['run_id']}",
                                     purpose=f"live switchover to {target} and back")
        except LeaseHeld as exc:
            raise AirflowFailException(f"live switchover refused: {exc}") from None
        try:
            return self._switch_there_and_back(context, start=start, policy=policy, original=original, target=target,
                                               legs=legs, failover_hook=failover_hook)
        finally:
            failover_hook.give_back_lease(context["run_id"])

    def _switch_there_and_back(self, context: Context, *, start: DrillStart, policy: Any, original: str, target: str,
                               legs: dict[str, SwitchoverLeg], failover_hook: FailoverHook) -> dict[str, Any]:
        cluster = failover_hook.get_cluster(report=self.log.info)
        with CommitRecorder(cluster.app_conninfo) as load:
            _wait_for(load, 20)
            for leg, (to, frm) in (("there", (target, original)), ("back", (original, target))):
                params = FailoverParams(target=to, mode="switchover",
                                        reason=f"DR drill {start.drill_id}: live switchover {leg}")
                leg_cluster = FailoverHook(policy_path=self.policy_path).get_cluster(report=self.log.info)
                services, probe = None, None
                if policy.application is not None:  # the application tier moves with the primary, and is proven
                    from continuity.hooks.application import ApplicationProbeHook
                    from continuity.hooks.services import get_service_control

                    services = get_service_control(policy)
                    probe = ApplicationProbeHook(policy=policy.with_primary(to),
                                                 region=policy.topology.node(to).region).run
                try:
                    done = run_all(leg_cluster, params, primary=frm, run_id=f"{context['run_id']}:{leg}",
                                   services=services, probe_application=probe)
                except FailoverError as exc:
                    raise AirflowFailException(f"live switchover {leg} failed: {exc}") from exc
                if done.topology is not None:
                    self.record_topology(done.topology)
                failover_hook.renew_lease(context["run_id"])
                legs[leg] = SwitchoverLeg(to=to, unavailability_seconds=done.unavailability_seconds,
                                          steps=done.records.step_seconds())
                self.log.info("switchover %s to %s done: entry point held for %s s", leg, to,
                              done.unavailability_seconds)
            _wait_for(load, len(load.acknowledged) + 20)
        lost = load.missing_on(cluster.app_conninfo)
        result = LiveSwitchoverResult(drill_id=start.drill_id, target=target, legs=legs,
                                      acknowledged_commits=len(load.acknowledged), failed_statements=len(load.errors),
                                      application_outage_seconds=round(load.longest_gap, 3), lost_commits=len(lost))
        hook = self.hook()
        locations = hook.get_locations()
        for key in store_report(result, [locations[name] for name in sorted(hook.required_locations())],
                                name=f"{start.drill_id}-switchover", prefix=REPORT_PREFIX):
            self.log.info("switchover report written to %s", key)
        self.log.info("application-visible outage %.3f s over two switchovers; %d acknowledged commits, %d lost, "
                      "%d failed statements", load.longest_gap, len(load.acknowledged), len(lost), len(load.errors))
        if lost:
            raise AirflowFailException(f"{len(lost)} acknowledged commits are missing after the switchovers")
        return result.model_dump(mode="json")


def _drill_start(context: Context) -> DrillStart:
    raw = context["ti"].xcom_pull(task_ids="start_drill")
    if not raw:
        raise AirflowFailException("no drill start in XCom: start_drill did not succeed")
    return DrillStart.model_validate(raw)


def _wait_for(load: CommitRecorder, count: int) -> None:
    if not load.wait_for(count):
        raise AirflowFailException(f"the drill's writer could not commit through the entry point: {load.errors[-3:]}")
