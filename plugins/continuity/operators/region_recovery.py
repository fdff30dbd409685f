"""Operators of dr_region_recovery: lose the primary region, recover in the DR region, come back."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from continuity.failover.lease import LeaseHeld, LeaseLost
from continuity.failover.steps import rebuild_region, run_all
from continuity.failover.records import FailoverError, FailoverParams
from continuity.hooks.application import ApplicationProbeHook
from continuity.hooks.failover import FailoverHook
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.exercises.loadgen import ApplicationWriter, missing_annotations
from continuity.operators.base import ContinuityBackupOperator
from continuity.objects.restore import FailBack, missing_from
from continuity.exercises.region_recovery import (REPORT_PREFIX, ExerciseStart, RecoveryResult, SwitchBack,
                                                  commit_loss_marker, database_rpo, differences, late_start,
                                                  marker_recovered, objectives_for, observe, plan_exercise,
                                                  region_return, render_markdown, writer_record)
from continuity.reports import (Measurement, config_backup_age, object_rpo, price_downtime, rpo_measurements,
                                store_report)
from continuity.restore.engine import check_object_references
from continuity.hooks.services import get_service_control
from continuity.storage.locations import key_safe

WARM_UP_WRITES = 20  # acknowledged before the loss, so the writer is known to work
WRITES_AFTER_RECOVERY = 20  # acknowledged in the recovery region before the writer stops


class _Database:
    """`connect(database)` for the consistency check, on the recovered primary through the entry point."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    def connect(self, database: str) -> Any:
        import psycopg

        return psycopg.connect(self.conninfo, prepare_threshold=None)


class _ExerciseOperator(ContinuityBackupOperator):
    def cluster(self):
        return FailoverHook(policy_path=self.policy_path).get_cluster(report=self.log.info)

    def renew_lease(self, context: Context, *, strict: bool) -> None:
        try:
            FailoverHook(policy_path=self.policy_path).renew_lease(context["run_id"])
        except LeaseLost as exc:
            if strict:
                raise AirflowFailException(f"{self.task_id} did not run: {exc}") from None
            self.log.error("going on without the cluster lease: %s", exc)

    def start(self, context: Context) -> ExerciseStart:
        raw = context["ti"].xcom_pull(task_ids="plan_exercise")
        if not raw:
            # The tasks that always run (restore, check) have nothing to do when no exercise started.
            raise AirflowSkipException("no exercise was planned (plan_exercise did not succeed): nothing was changed")
        return ExerciseStart.model_validate(raw)

    def store(self, result: RecoveryResult, *, lost_region: str | None) -> None:
        """The report in every required location outside `lost_region` (its storage may be unreachable)."""
        hook = self.hook()
        locations = hook.get_locations()
        regions = {loc.name: loc.region for loc in hook.policy.storage.locations}
        reachable = [locations[n] for n in sorted(hook.required_locations()) if regions[n] != lost_region]
        for key in store_report(result, reachable, name=result.exercise_id, prefix=REPORT_PREFIX,
                                render=render_markdown):
            self.log.info("report written to %s (+ .md)", key)


class PlanRegionLossOperator(_ExerciseOperator):
    """Check the starting point (one primary in the region to lose, a streaming standby in the recovery
    region, the application serving) and record it: the exercise must leave things as found."""

    def execute(self, context: Context) -> dict[str, Any]:
        dag_run = context["dag_run"]
        late = late_start(scheduled=str(getattr(dag_run, "run_type", "")).lower().endswith("scheduled"),
                          due=context.get("data_interval_end") or getattr(dag_run, "run_after", None),
                          now=datetime.now(timezone.utc))
        if late:
            raise AirflowSkipException(late)
        policy = self.hook().policy
        cluster = self.cluster()
        services = get_service_control(policy)
        found = observe(cluster, services, list(policy.application.regions) if policy.application else [])
        conn = PostgresNodeHook.get_connection(policy.topology.entry_point.conn_id)
        try:
            start = plan_exercise(policy, exercise_id=key_safe(context["run_id"]), found=found,
                                  database=conn.schema or policy.topology.databases[0])
        except ValueError as exc:
            raise AirflowFailException(f"the exercise cannot start: {exc}. Nothing was changed.") from exc
        self.log.info("found: primary %s, streaming %s (synchronous %s), application serving in %s", found.primary,
                      found.streaming, found.synchronous, found.serving_regions)
        self.log.info("plan: lose %s (%s), fail over to %s in %s, rebuild %s as standbys, switch back",
                      start.region, ", ".join(start.lost_nodes), start.target, start.recovery_region, start.region)
        return start.model_dump(mode="json")


class LoseRegionAndRecoverOperator(_ExerciseOperator):
    """Under a writer through the application: commit a marker, lose the region, fail over to the recovery
    region's standby with its application, validate every function, measure every RTO and RPO. Never fails
    the task for a missed objective (the region must still come back): check_left_as_found does."""

    def execute(self, context: Context) -> dict[str, Any]:
        start = self.start(context)
        hook = self.hook()
        policy = hook.policy
        try:  # one writer: held until check_left_as_found, renewed by each task between
            FailoverHook(policy_path=self.policy_path).take_lease(
                run_id=context["run_id"], holder=f"dr_region_recovery run {context['run_id']}",
                purpose=f"region-loss exercise: lose {start.region}, fail over to {start.target}, switch back")
        except LeaseHeld as exc:
            raise AirflowFailException(f"the exercise cannot start: {exc}") from None
        services = get_service_control(policy)
        cluster = self.cluster()
        credentials = PostgresNodeHook.get_connection(policy.application.probe_conn_id)
        urls = [ApplicationProbeHook(policy=policy, region=r).target().url for r in (start.region, start.recovery_region)]
        result = RecoveryResult(exercise_id=start.exercise_id, region=start.region,
                                recovery_region=start.recovery_region, target=start.target, started_at=start.started_at)
        probe = ApplicationProbeHook(policy=policy.with_primary(start.target), region=start.recovery_region).run
        with ApplicationWriter(urls=urls, email=credentials.login or "", password=credentials.password or "",
                               label=f"region-exercise:{start.exercise_id}") as writer:
            if not writer.wait_for(WARM_UP_WRITES, timeout=60):
                raise AirflowFailException(f"the writer could not write through the application before the loss "
                                           f"({writer.errors[-3:]}): nothing was changed")
            marker, result.marker_committed_at = commit_loss_marker(cluster.app_conninfo, start.exercise_id)
            result.lost_at = datetime.now(timezone.utc)
            result.lost = services.isolate_region(start.region)
            self.log.info("region %s lost at %s: %s", start.region, result.lost_at.isoformat(), ", ".join(result.lost))
            params = FailoverParams(target=start.target, mode="failover",
                                    reason=f"region-loss exercise {start.exercise_id}: {start.region} lost")
            try:
                done = run_all(cluster, params, primary=start.original_primary, run_id=context["run_id"],
                               services=services, probe_application=probe, unreachable=start.lost_nodes)
                if done.topology is not None:
                    self.record_topology(done.topology)
                result.recovered_at = datetime.now(timezone.utc)
                result.failover_steps = done.records.step_seconds()
                result.data_loss_bytes = done.records.catch_up.data_loss_bytes if done.records.catch_up else None
                result.application = done.records.validation.application if done.records.validation else None
                acknowledged = len(writer.acknowledged)
                if not writer.wait_for(acknowledged + WRITES_AFTER_RECOVERY, timeout=60):
                    result.error = (f"the writer got no acknowledged write in {start.recovery_region} within 60 s "
                                    f"after the recovery: {writer.errors[-3:]}")
            except FailoverError as exc:
                result.error = f"recovery failed: {exc}"
                self.log.error("%s", result.error)
        acknowledged_at = dict(writer.acknowledged)
        if result.error is None or result.recovered_at is not None:
            lost = missing_annotations(cluster.app_conninfo, writer.ids)
            result.writer = writer_record(writer, lost)
            found, newest = marker_recovered(cluster.app_conninfo, marker)
            result.marker_recovered = found
            self.log.info("writer: %d annotations acknowledged, %d lost, %d failed requests, longest gap %.2f s; "
                          "marker %s", len(writer.acknowledged), len(lost), len(writer.errors), writer.longest_gap,
                          "recovered" if found else "LOST")
            result.objectives = objectives_for(policy, lost_at=result.lost_at, probe=result.application,
                                               measurements=self._measurements(start, result, newest, acknowledged_at,
                                                                               cluster.app_conninfo))
            result.downtime_seconds, result.downtime_cost = price_downtime(policy, result.objectives)
            self.log.info("downtime until every function was back: %s s, %s", result.downtime_seconds,
                          result.downtime_cost)
            for objective in result.objectives:
                self.log.info("%s: %s against target %s: %s (from: %s)", objective.objective,
                              "not measured" if objective.measured_seconds is None else f"{objective.measured_seconds} s",
                              objective.target, objective.verdict, objective.source)
        self.store(result, lost_region=start.region)
        return result.model_dump(mode="json")

    def _measurements(self, start: ExerciseStart, result: RecoveryResult, newest_marker: datetime | None,
                      acknowledged_at: dict[int, float], conninfo: str) -> dict[str, Measurement]:
        hook = self.hook()
        policy = hook.policy
        database = database_rpo(marker_at=result.marker_committed_at, marker_found=bool(result.marker_recovered),
                                newest_marker=newest_marker, writer=result.writer, acknowledged_at=acknowledged_at)
        location = next(loc.name for loc in policy.storage.locations
                        if loc.region == start.recovery_region and loc.required)
        newest_config = hook.get_catalog().latest("config", location=location)
        replicas = hook.get_object_replicas(start.recovery_region)
        objects: dict[str, Measurement] = {}
        for name, category in policy.data_categories.items():
            if category.measured_by == "object_replication" and name in replicas:
                check = check_object_references(policy, name, replicas[name][0], _Database(conninfo), start.database,
                                                describe=f"the recovered database {start.database} on {start.target}",
                                                report=self.log.info)
                if check is not None:
                    result.objects.append(check)
                objects[name] = object_rpo(replicas[name], check)
        config = config_backup_age(newest_config, location=location, at=result.lost_at) if newest_config else None
        return rpo_measurements(policy, database=database, config=config, objects=objects)

class RestoreRegionOperator(_ExerciseOperator):
    """The lost region comes back (whatever happened before): its storage and Redis reconnect; its database
    nodes are rebuilt as standbys of the recovered primary, or, when the recovery never promoted one,
    started as they were."""

    def execute(self, context: Context) -> dict[str, Any]:
        start = self.start(context)
        self.renew_lease(context, strict=False)  # bringing the region back is never held up by the lease
        services = get_service_control(self.hook().policy)
        started = services.reconnect_region(start.region)
        self.log.info("region %s reconnected: %s", start.region, ", ".join(started) or "already up")
        cluster = self.cluster()
        decision = region_return(start, cluster.writable_nodes())
        self.log.info("%s", decision.reason)
        if decision.action == "rebuild":
            record = rebuild_region(cluster, start.lost_nodes, primary=start.target)
            if record.needs_rebuild:
                raise AirflowFailException(f"could not rebuild {', '.join(record.needs_rebuild)} as standbys of "
                                           f"{start.target}: see the log above; {start.target} is the only primary")
            return record.model_dump(mode="json")
        if decision.action == "nothing":
            raise AirflowSkipException(decision.reason)
        if decision.action == "restart_as_found":
            for name in start.lost_nodes:
                cluster.control.start(name)
            services.start_region(start.region)
            raise AirflowFailException(f"{decision.reason}; writable now: {', '.join(cluster.writable_nodes()) or 'none'}")
        raise AirflowFailException(decision.reason)


class SwitchBackOperator(_ExerciseOperator):
    """Switch over to the original primary, the application moving back with it, its functions validated."""

    def execute(self, context: Context) -> dict[str, Any]:
        start = self.start(context)
        hook = self.hook()
        policy = hook.policy
        if policy.topology.primary.name == start.original_primary:
            raise AirflowSkipException(f"{start.original_primary} is already the primary: nothing to switch back")
        self.renew_lease(context, strict=True)  # a lease lost meanwhile: another run may be moving the cluster
        services = get_service_control(policy)
        probe = ApplicationProbeHook(policy=policy.with_primary(start.original_primary), region=start.region).run
        recovered = RecoveryResult.model_validate(context["ti"].xcom_pull(task_ids="lose_region_and_recover"))
        since = recovered.lost_at or start.started_at
        # What the recovery region's application wrote goes home with it (objects.fail_back, in the step
        # that moves the application): home must hold every object a row names.
        carry = hook.objects_going_home(from_region=start.recovery_region, to_region=start.region, since=since,
                                        report=self.log.info)
        began = time.monotonic()
        try:
            done = run_all(self.cluster(), FailoverParams(target=start.original_primary, mode="switchover",
                                                          reason=f"region-loss exercise {start.exercise_id}: back"),
                           primary=start.target, run_id=f"{context['run_id']}:back", services=services,
                           probe_application=probe, carry_objects=carry)
        except FailoverError as exc:
            raise AirflowFailException(f"switch back failed: {exc}") from exc
        if done.topology is not None:
            self.record_topology(done.topology)
        seconds = round(time.monotonic() - began, 3)
        self.log.info("switched back to %s in %.1f s (entry point held %s s)", start.original_primary, seconds,
                      done.unavailability_seconds)
        moved = done.records.start_application
        copied = [FailBack.model_validate(c) for c in moved.objects_home] if moved else []
        missing = self._missing_home(since)
        if missing:
            self.log.error("%d objects named by rows written since the loss are not in the home bucket: %s",
                           len(missing), missing[:5])
        return SwitchBack(seconds=seconds, unavailability_seconds=done.unavailability_seconds, fail_back=copied,
                          missing_home=missing).model_dump(mode="json")

    def _missing_home(self, since: datetime) -> list[str]:
        """Every object a row written since the loss names, looked for in its home (source) bucket."""
        import psycopg
        from psycopg import sql

        hook = self.hook()
        policy = hook.policy
        missing: list[str] = []
        cluster = self.cluster()
        for name, spec in (policy.objects.categories.items() if policy.objects else []):
            reference = spec.database_reference
            if reference is None or not reference.time_column:
                continue
            query = sql.SQL("SELECT {}, {} FROM {} WHERE {} >= %s").format(
                sql.Identifier(reference.key_column),
                sql.Identifier(reference.size_column) if reference.size_column else sql.NULL,
                sql.Identifier(reference.table), sql.Identifier(reference.time_column))
            with psycopg.connect(cluster.app_conninfo, prepare_threshold=None) as conn:
                rows = conn.execute(query, (since,)).fetchall()
            home = hook.get_replicator(name, report=self.log.info).source
            absent = missing_from(home, rows)
            missing += absent
            self.log.info("%s: %d rows written since %s; %d of their objects missing from %s", name, len(rows),
                          since.isoformat(), len(absent), home.describe(home.prefix))
        return missing


class CheckLeftAsFoundOperator(_ExerciseOperator):
    """The verdict: every acknowledged write still there, the cluster and application as found, every
    function within its maximum. Writes the final report to every required location."""

    def execute(self, context: Context) -> dict[str, Any]:
        start = self.start(context)
        ti = context["ti"]
        raw = ti.xcom_pull(task_ids="lose_region_and_recover")
        result = RecoveryResult.model_validate(raw) if raw else RecoveryResult(
            exercise_id=start.exercise_id, region=start.region, recovery_region=start.recovery_region,
            target=start.target, started_at=start.started_at, error="lose_region_and_recover did not report")
        rebuilt = ti.xcom_pull(task_ids="restore_region") or {}
        result.rebuilt = list(rebuilt.get("following", []))
        raw_back = ti.xcom_pull(task_ids="switch_back")
        if raw_back:
            back = SwitchBack.model_validate(raw_back)
            result.switch_back_seconds, result.switch_back_outage_seconds = back.seconds, back.unavailability_seconds
            result.fail_back, result.missing_home = back.fail_back, back.missing_home
        policy = self.hook().policy
        cluster = self.cluster()
        FailoverHook(policy_path=self.policy_path).give_back_lease(context["run_id"])  # nothing changes from here
        now = observe(cluster, get_service_control(policy),
                      list(policy.application.regions) if policy.application else [])
        result.differences = differences(start.found, now)
        result.left_as_found = not result.differences
        if result.writer is not None and now.primary is not None:
            result.writes_lost_by_the_end = missing_annotations(cluster.app_conninfo, result.writer.ids)
        self.store(result, lost_region=None)
        failures = result.failures
        if failures:
            raise AirflowFailException("region-loss exercise failed: " + "; ".join(failures))
        self.log.info("region-loss exercise passed: %s lost and recovered in %s, %d writes kept, left as found",
                      start.region, start.recovery_region, result.writer.acknowledged if result.writer else 0)
        return result.model_dump(mode="json")
