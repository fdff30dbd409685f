"""The operators of dr_failover: thin wrappers over `continuity.failover.steps` and `continuity.failover.records`.

Every step reads the run's params and the preflight plan from XCom, logs one sentence per decision,
and pushes its own record (or, when it fails, `failure`) so the audit task can tell the whole story.
Records are the core's pydantic models: `model_dump(mode="json")` into XCom, `model_validate` out.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, AirflowTaskTimeout
from pydantic import BaseModel

from continuity.failover import steps
from continuity.failover import records as failover_records
from continuity.failover.lease import LeaseHeld, LeaseLost
from continuity.sensors.cluster_lease import WAITED_FOR_KEY
from continuity.hooks.backup import ContinuityBackupHook
from continuity.hooks.failover import FailoverHook
from continuity.hooks.topology import TOPOLOGY_NAME, TOPOLOGY_PREFIX, read_topology
from continuity.failover.nodecontrol import NodeControlError
from continuity.policy.model import format_duration
from continuity.policy.loading import load_policy
from continuity.operators.base import ContinuityOperator
from continuity.reports import AuditNotStored, failover_objectives, store_failover_audit, store_report



def _plan(context: Context) -> failover_records.FailoverPlan:
    plan = context["ti"].xcom_pull(task_ids="preflight")
    if not plan:
        raise AirflowFailException("no preflight plan in XCom: preflight did not succeed")
    return failover_records.FailoverPlan.model_validate(plan)


def _record(context: Context, task_id: str, model: type[failover_records.StepRecord]) -> Any:
    """A step's record from XCom, validated against its model (None when the step did not run)."""
    raw = context["ti"].xcom_pull(task_ids=task_id)
    return model.model_validate(raw) if raw else None


def _skip_unless_acting(plan: failover_records.FailoverPlan) -> None:
    if plan.action == "none":
        raise AirflowSkipException(f"{plan.nothing_to_do or f'this run already made {plan.target} the primary'}: "
                                   f"nothing to do")
    if plan.dry_run:
        raise AirflowSkipException("dry run: checks passed, nothing changed")


class FailoverStepOperator(ContinuityOperator):
    """A step of dr_failover. Subclasses implement `step`; a failure is recorded before it propagates."""

    ui_color = "#fadbd8"

    def make_hook(self) -> FailoverHook:
        return FailoverHook(policy_path=self.policy_path)

    def hook(self) -> FailoverHook:
        return super().hook()  # type: ignore[return-value]  # made by make_hook

    def cluster(self) -> steps.ReplicationGroup:
        return self.hook().get_cluster(report=self.log.info)

    # Steps after the cut-over renew the run's cluster lease before they act (a dead run loses it by lease_ttl).
    renews_lease = False

    def execute(self, context: Context) -> Any:
        started, started_at = time.time(), failover_records.now_iso()
        if self.renews_lease:
            try:
                self.hook().renew_lease(context["run_id"])
            except LeaseLost as exc:
                if self.task_id == "rollback":  # one writable primary matters more than the lease: it still runs
                    self.log.error("rolling back without the cluster lease: %s", exc)
                else:  # another run took it after it expired: this run must not change anything more
                    context["ti"].xcom_push(key="failure", value=str(exc))
                    raise AirflowFailException(f"{self.task_id} did not run: {exc}") from None
        try:
            result = self.step(context)
        except AirflowSkipException:
            raise
        except AirflowTaskTimeout:  # a BaseException: said here, or the record could only guess why the step died
            if not self.timeout_said:
                context["ti"].xcom_push(key="failure", value=self.timed_out())
            raise
        except Exception as exc:
            context["ti"].xcom_push(key="failure", value=str(exc))
            if isinstance(exc, failover_records.FailoverError | ValueError):
                raise AirflowFailException(str(exc)) from exc
            raise
        if isinstance(result, failover_records.StepRecord):
            result = result.model_copy(update={"seconds": round(time.time() - started, 3),
                                               "step_started_at": started_at, "step_finished_at": failover_records.now_iso()})
        return result.model_dump(mode="json") if isinstance(result, BaseModel) else result

    def step(self, context: Context) -> BaseModel | dict[str, Any]:
        raise NotImplementedError

    timeout_said = False  # a step that said itself which of its parts timed out

    def timed_out(self, step: str | None = None) -> str:
        return (f"{step or self.task_id} timed out after {self.execution_timeout} (the policy's failover.step_timeout); "
                f"HINT: see this task's log for where it stood")


def _check_service_control(policy: Any, target: str) -> None:
    """A move to another region starts the application there: refuse before anything changes if nothing can."""
    from continuity.hooks.services import get_service_control
    from continuity.failover.servicecontrol import ServiceControlError

    topology = policy.topology
    if policy.application is None or target not in {n.name for n in topology.nodes}:
        return
    if topology.node(target).region == topology.primary.region:
        return
    try:
        get_service_control(policy)
    except ServiceControlError as exc:
        raise failover_records.PreflightFailed("service control configured", str(exc)) from None


def _check(hook: FailoverHook, context: Context, report: Any) -> failover_records.FailoverPlan:
    """Preflight's checks, from the run's params to a plan (raises PreflightFailed naming the failed check)."""
    params = failover_records.validate_params(context["params"], hook.policy)
    try:
        cluster = hook.get_cluster(report=report)
    except NodeControlError as exc:
        raise failover_records.PreflightFailed("node control configured", str(exc)) from None
    _check_service_control(hook.policy, params.target)
    return steps.preflight(cluster, params, primary=hook.policy.topology.primary.name,
                           run_id=context["run_id"], recorded=read_topology())


class PreflightOperator(FailoverStepOperator):
    """Validate the params and check the cluster; the plan it returns drives every later step."""

    def step(self, context: Context) -> failover_records.FailoverPlan:
        hook = self.hook()
        try:
            plan = _check(hook, context, self.log.info)
        except failover_records.PreflightFailed as exc:
            raise AirflowFailException(str(exc)) from exc
        dag_run = context["dag_run"]
        plan = plan.model_copy(update={"triggered_by": getattr(dag_run, "triggering_user_name", None)})
        if plan.action != "none":
            for line in plan.plan:
                self.log.info("plan: %s", line)
            if exposure := failover_records.orchestrator_exposure(hook.policy):
                self.log.warning("%s", exposure)
            if plan.dry_run:
                self.log.info("dry run: every check passed; nothing will be changed")
            else:
                _report_failover(hook.policy, plan, context, outcome=None)
        return plan


class ApproveFailoverOperator(HITLOperator):
    """A second person approves the plan preflight made, before anything changes (the policy's
    `failover.approval`; not asked for dry runs, runs with nothing to do, and the health monitor's automatic
    failovers, which no person triggered). Any user allowed to answer the
    run's approvals (dr_operator) may approve, except the one who triggered it. Once approved, preflight's
    checks run again: the cluster may have changed while the run waited. Reject, no answer within the
    timeout, a self-approval or a failed recheck stop the run with nothing changed; the record says which."""

    APPROVE = "Approve"
    REJECT = "Reject"

    def __init__(self, *, policy_path: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's params: this form has none
        approval = load_policy(policy_path).failover.approval
        super().__init__(subject="Approve dr_failover run {{ run_id }}", options=[self.APPROVE, self.REJECT],
                         defaults=[self.REJECT], response_timeout=approval.timeout, **kwargs)
        self.policy_path = policy_path

    def hook(self) -> FailoverHook:
        return FailoverHook(policy_path=self.policy_path)

    def execute(self, context: Context) -> Any:
        plan = _plan(context)
        _skip_unless_acting(plan)
        needed, why = failover_records.approval_needed(required=self.hook().policy.failover.approval.required,
                                            triggered_by=plan.triggered_by)
        self.log.info("%s", why)
        if not needed:
            return failover_records.ApprovalRecord(required=False, approved=True, triggered_by=plan.triggered_by,
                                        why=why).model_dump(mode="json")
        self.subject = f"Approve the {plan.action} of {plan.target} (dr_failover run {context['run_id']})"
        self.body = "\n".join([
            f"Triggered by **{plan.triggered_by or 'unknown'}**; reason: {plan.params.reason}.",
            "Preflight passed; the plan:", "", *(f"- {line}" for line in plan.plan), "",
            "Approve to carry it out, Reject to stop with nothing changed. The person who triggered the run "
            "may not approve it; checks run again once approved."])
        self.log.info("waiting for a second person's approval of the %s to %s (triggered by %s)", plan.action,
                      plan.target, plan.triggered_by)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        plan = _plan(context)
        record = failover_records.ApprovalRecord(required=True, approved=False, triggered_by=plan.triggered_by,
                                      why=failover_records.approval_needed(required=True, triggered_by=plan.triggered_by)[1])
        try:
            result = super().execute_complete(context, event)
            record.answer = (result["chosen_options"] or [None])[0]
            record.approved_by = (result.get("responded_by_user") or {}).get("name")
            if result.get("responded_at") is not None and record.approved_by is not None:
                record.answered_at = result["responded_at"].isoformat()
                record.waited_seconds = round(
                    (result["responded_at"] - datetime.fromisoformat(plan.checked_at)).total_seconds(), 3)
                self.log.info("answered %.0f s after the plan was ready: waiting for a person, reported apart from "
                              "the recovery's RTO", record.waited_seconds)
            if record.approved_by is None:
                raise failover_records.FailoverError(f"no answer within {format_duration(self.response_timeout)}: not approved")
            if record.answer != self.APPROVE:
                raise failover_records.FailoverError(f"rejected by {record.approved_by}")
            if plan.triggered_by and record.approved_by == plan.triggered_by:
                raise failover_records.FailoverError(
                    f"approved by {record.approved_by}, who triggered the run: a second person must approve "
                    f"(HINT: trigger again and ask another dr_operator to answer the approval)")
            try:
                again = _check(self.hook(), context, self.log.info)
            except failover_records.PreflightFailed as exc:
                raise failover_records.FailoverError(f"approved by {record.approved_by}, but the cluster changed while the "
                                          f"run waited: {exc}") from None
            if (again.action, again.target, again.old_primary) != (plan.action, plan.target, plan.old_primary):
                raise failover_records.FailoverError(
                    f"approved by {record.approved_by}, but the cluster changed while the run waited: the plan is "
                    f"now {again.action} from {again.old_primary} to {again.target} (HINT: trigger again)")
            record.rechecked = [f"{check.check}: {check.detail}" for check in again.checks]
        except Exception as exc:
            message = f"{exc}; nothing changed"
            context["ti"].xcom_push(key="failure", value=message)
            raise AirflowFailException(message) from exc
        record.approved = True
        self.log.info("approved by %s (triggered by %s); checks passed again", record.approved_by, plan.triggered_by)
        return record.model_dump(mode="json")


CUT_OVER_TASK = "cut_over"
REFUSED = "cut_over refused:"  # how a cut-over that changed nothing (no recorded approval) says so


def step_xcom(ti: Any, step: str, *, key: str | None = None) -> Any:
    """A step's record (or, with key="failure", its failure) from XCom: the cut-over's four steps are kept by
    the one task that runs them, under the step's name."""
    if step in steps.CUT_OVER_STEPS:
        if key == "failure":
            failed = ti.xcom_pull(task_ids=CUT_OVER_TASK, key="failed_step")
            return ti.xcom_pull(task_ids=CUT_OVER_TASK, key="failure") if failed == step else None
        return ti.xcom_pull(task_ids=CUT_OVER_TASK, key=step)
    return ti.xcom_pull(task_ids=step, key=key) if key else ti.xcom_pull(task_ids=step)


class CutOverOperator(FailoverStepOperator):
    """Fence, catch-up, promote and repoint, one after the other in this one task. Switchover: pause the entry
    point, stop the primary cleanly and fence it, wait until the target replayed its final LSN, promote,
    point the entry point at the new primary and resume. Failover: stop and fence the old primary if it
    still runs, wait until the target stops receiving WAL (the data loss estimate), promote, repoint.

    The entry point is paused from the first step to the last, so they share a task: as separate tasks,
    every scheduler round trip between them was outage (3.18 s under the scheduler against 0.4-0.9 s in
    one process). The catch-up wait therefore holds this worker slot, bounded by failover.catch_up_timeout.
    Each step's record goes to XCom (key: the step's name) the moment it completes, and the new topology is
    recorded right after the promotion, so a worker lost midway leaves both known."""

    def step(self, context: Context) -> dict[str, Any]:
        plan = _plan(context)
        _skip_unless_acting(plan)
        ti = context["ti"]
        refusal = failover_records.approval_refusal(ti.xcom_pull(task_ids="approve"),
                                                    required=self.policy.failover.approval.required,
                                                    triggered_by=plan.triggered_by)
        if refusal:  # said as the first cut-over step's failure, so the audit and the incident name it
            ti.xcom_push(key="failed_step", value=steps.CUT_OVER_STEPS[0])
            raise AirflowFailException(f"{REFUSED} {refusal}")
        try:  # one writer: no drill or exercise may switch the cluster over while this run does
            self.hook().take_lease(run_id=context["run_id"], holder=f"dr_failover run {context['run_id']}",
                                   purpose=f"{plan.action} to {plan.target}")
        except LeaseHeld as exc:
            ti.xcom_push(key="failed_step", value=steps.CUT_OVER_STEPS[0])
            raise AirflowFailException(f"{REFUSED} {exc}") from None

        def promoted(promotion: failover_records.PromotionRecord) -> None:
            topology = failover_records.topology_record(plan=plan, promotion=promotion, rejoin_result=None,
                                             run_id=context["run_id"])
            self.record_topology(topology)
            self.log.info("topology recorded: %s is the primary on timeline %s (before the repoint, so every DAG "
                          "follows it even if this run stops here)", topology.primary, topology.timeline)

        finished: list[str] = []

        def done(name: str, record: failover_records.StepRecord) -> None:
            finished.append(name)
            ti.xcom_push(key=name, value=record.model_dump(mode="json"))
            self.log.info("%s done in %.3f s", name, record.seconds or 0.0)

        try:
            records = steps.cut_over(self.cluster(), plan, done=done, promoted=promoted)
        except steps.CutOverFailed as exc:
            ti.xcom_push(key="failed_step", value=exc.step)
            raise
        except AirflowTaskTimeout:
            stuck = next((name for name in steps.CUT_OVER_STEPS if name not in finished), steps.CUT_OVER_STEPS[-1])
            ti.xcom_push(key="failed_step", value=stuck)
            ti.xcom_push(key="failure", value=self.timed_out(stuck))
            self.timeout_said = True
            raise
        self.log.info("entry point unavailable for %s s (fence to repoint)", records.unavailability_seconds)
        return {"unavailability_seconds": records.unavailability_seconds, "steps": records.step_seconds()}


class StartApplicationOperator(FailoverStepOperator):
    """Start the application tier in the new primary's region (its Redis made primary first) and stop the
    old region's; nothing to do when both are in one region or the policy has no application section."""

    renews_lease = True

    def step(self, context: Context) -> failover_records.ApplicationRecord:
        from continuity.hooks.services import get_service_control

        plan = _plan(context)
        _skip_unless_acting(plan)
        policy = self.policy
        if policy.application is None:
            raise AirflowSkipException("the policy has no application section: no application tier to move")
        topology = policy.topology
        from_region, to_region = topology.node(plan.old_primary).region, topology.node(plan.target).region
        # Since when the old region served: the recorded change that made the old primary primary.
        since = datetime.fromisoformat(plan.old_primary_since) if plan.old_primary_since else None
        carry = ContinuityBackupHook(policy_path=self.policy_path).objects_going_home(
            from_region=from_region, to_region=to_region, since=since, report=self.log.info)
        return steps.move_application(get_service_control(policy), from_region=from_region, to_region=to_region,
                                      report=self.log.info, carry_objects=carry)


class RejoinOperator(FailoverStepOperator):
    """Make the other standbys follow the new primary and rewind the old primary into a standby."""

    renews_lease = True

    def step(self, context: Context) -> failover_records.RejoinRecord:
        plan = _plan(context)
        _skip_unless_acting(plan)
        return steps.rejoin(self.cluster(), plan)


class ValidateOperator(FailoverStepOperator):
    """A write through the entry point, standbys streaming, WAL archived on the new timeline."""

    renews_lease = True

    def step(self, context: Context) -> failover_records.ValidationRecord:
        plan = _plan(context)
        _skip_unless_acting(plan)
        rejoined = _record(context, "rejoin", failover_records.RejoinRecord)
        policy = self.policy  # after the promotion: the new primary's region serves the application
        probe = None
        if policy.application is not None:
            from continuity.hooks.application import ApplicationProbeHook

            probe = ApplicationProbeHook(policy=policy, region=policy.topology.node(plan.target).region).run
        return steps.validate(self.cluster(), plan, run_id=context["run_id"],
                              following=rejoined.following if rejoined else None, probe_application=probe)


class RollbackOperator(FailoverStepOperator):
    """Runs only when a step failed. Switchover: the old primary serves again; failover: exactly one
    writable primary, named."""

    renews_lease = True

    def step(self, context: Context) -> failover_records.RollbackRecord:
        raw = context["ti"].xcom_pull(task_ids="preflight")
        plan = failover_records.FailoverPlan.model_validate(raw) if raw else None
        if plan is None or plan.action == "none" or plan.dry_run:
            raise AirflowSkipException("preflight stopped the run before anything changed: nothing to roll back")
        ti = context["ti"]
        # Whether anything changed, not whether the run was approved: a cut-over that started (a record, a
        # failure, or a task lost without either) is rolled back, approved or not.
        cut_over_state = ti.get_task_states(dag_id=ti.dag_id, task_ids=[CUT_OVER_TASK],
                                            run_ids=[ti.run_id]).get(ti.run_id, {}).get(CUT_OVER_TASK)
        refused = str(ti.xcom_pull(task_ids=CUT_OVER_TASK, key="failure") or "").startswith(REFUSED)
        started = not refused and (step_xcom(ti, "fence") is not None
                                   or ti.xcom_pull(task_ids=CUT_OVER_TASK, key="failed_step")
                                   or cut_over_state in ("failed", "success"))
        if not started:
            raise AirflowSkipException("the cut-over never started: nothing changed, nothing to roll back")
        fenced = step_xcom(ti, "fence") is not None
        promoted = step_xcom(ti, "promote") is not None
        repointed = step_xcom(ti, "repoint") is not None
        failed_step = next((name for name in RecordOperator.STEPS if step_xcom(ti, name, key="failure")), None)
        result = steps.rollback(self.cluster(), plan, fenced=fenced, promoted=promoted, repointed=repointed,
                                failed_step=failed_step)
        self.log.warning(result.message)
        return result


def _report_failover(policy: Any, plan: failover_records.FailoverPlan, context: Context,
                     outcome: failover_records.FailoverAudit | None) -> None:
    """Tell dr_incident: at the start (a planned switchover pages nobody) and with the outcome, which
    joins the same incident (cause `failover:<run id>`, or the incident the params name)."""
    from continuity.alerts.callbacks import report_cause
    from continuity.incidents.records import IncidentRequest

    planned = plan.action == "switchover"
    if outcome is None:
        title = f"dr_failover: {plan.action} to {plan.target} started"
    else:
        title = (f"dr_failover: {outcome.outcome}; unavailability {outcome.unavailability_seconds} s, "
                 f"data loss {outcome.data_loss_bytes} bytes")
    report_cause(IncidentRequest(
        severity="low" if planned and not (outcome and outcome.failures) else "critical", title=title,
        description=str(context["params"].get("reason") or ""), functions=sorted(policy.functions_on_the_database()),
        incident_id=context["params"].get("incident_id") or None, cause_key=f"failover:{context['run_id']}",
        kind="planned" if planned else "incident", source=f"dr_failover run {context['run_id']}"))


def _lost_steps(ti: Any) -> dict[str, str]:
    """Steps whose task failed without reporting why: a worker lost mid-step pushes nothing, and its task is
    failed by the scheduler once its heartbeats stop. Named by the first cut-over step left without a record."""
    step_tasks = [CUT_OVER_TASK, *(name for name in failover_records.STEP_NAMES if name not in steps.CUT_OVER_STEPS)]
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=step_tasks, run_ids=[ti.run_id]).get(ti.run_id, {})
    lost: dict[str, str] = {}
    for task_id, state in states.items():
        if state != "failed":
            continue
        if task_id == CUT_OVER_TASK:
            if ti.xcom_pull(task_ids=CUT_OVER_TASK, key="failed_step"):
                continue
            name = next((step for step in steps.CUT_OVER_STEPS if step_xcom(ti, step) is None), "repoint")
        elif step_xcom(ti, task_id, key="failure"):
            continue
        else:
            name = task_id
        lost[name] = (f"task {task_id} failed without reporting why (its worker lost mid-step, or killed); "
                      f"see its log")
    return lost


class RecordOperator(FailoverStepOperator):
    """Always runs: persist the new topology (after a promotion) and write the audit record to storage
    and the log; fail the run, naming the failed step, when any step failed."""

    STEPS = failover_records.STEP_NAMES

    def step(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        records = failover_records.FailoverRecords.model_validate({name: step_xcom(ti, name) for name in self.STEPS})
        failures = {name: failure for name in self.STEPS if (failure := step_xcom(ti, name, key="failure"))}
        failures.update({name: why for name, why in _lost_steps(ti).items() if name not in failures})
        audit = failover_records.compose_audit(run_id=context["run_id"],
                                    triggered_by=getattr(context["dag_run"], "triggering_user_name", None),
                                    params=context["params"], records=records, failures=failures)
        audit.waited_for_lease_of = ti.xcom_pull(task_ids="wait_for_lease", key=WAITED_FOR_KEY)
        if audit.waited_for_lease_of:
            self.log.info("this run waited for the cluster lease held by %s", audit.waited_for_lease_of)
        if records.preflight is not None and records.preflight.action in ("switchover", "failover") \
                and not records.preflight.dry_run:
            moved = records.start_application
            replicas = ContinuityBackupHook(policy_path=self.policy_path).get_object_replicas(moved.to_region) \
                if moved is not None and moved.moved else {}
            measured = failover_objectives(self.policy, records, replicas)
            audit.function_rto = [o.model_dump(mode="json") for o in measured.rto]
            audit.function_rpo = [o.model_dump(mode="json") for o in measured.rpo]
            audit.downtime_cost = measured.downtime_cost
        if audit.topology is not None:
            self.record_topology(audit.topology)
            self.log.info("topology recorded: primary %s on timeline %s", audit.topology.primary,
                          audit.topology.timeline)
        not_stored = self._store(audit, attempt=ti.try_number)
        self.log.info("outcome: %s; unavailability %s s; data loss %s bytes", audit.outcome,
                      audit.unavailability_seconds, audit.data_loss_bytes)
        if records.preflight is not None and records.preflight.action != "none" and not records.preflight.dry_run:
            _report_failover(self.policy, records.preflight, context, outcome=audit)
        try:  # the cluster is as the audit says: another run may change it now
            self.hook().give_back_lease(context["run_id"])
        except Exception as exc:  # it expires by itself (failover.lease_ttl)
            self.log.error("the cluster lease of this run could not be given back (%s); it expires by itself", exc)
        if failures or not_stored:
            raise AirflowFailException("; ".join(filter(None, [audit.outcome if failures else None, not_stored])))
        return audit.summary()

    def _store(self, audit: failover_records.FailoverAudit, *, attempt: int) -> str | None:
        """Write the audit (and the topology) to every required location that answers; the reason when no
        location took the audit (the run then fails at the end, with the audit's text in this log)."""
        hook = ContinuityBackupHook(policy_path=self.policy_path)
        locations = hook.get_locations()
        required = [locations[name] for name in sorted(hook.required_locations())]
        not_stored = None
        try:
            for key in store_failover_audit(audit, required, attempt=attempt, warn=self.log.error):
                self.log.info("audit written to %s", key)
        except AuditNotStored as exc:
            self.log.error("%s\nthe audit: %s", exc, audit.model_dump_json())
            not_stored = str(exc)
        if audit.topology:
            store_report(audit.topology, required, name=TOPOLOGY_NAME, prefix=TOPOLOGY_PREFIX, warn=self.log.error)
        return not_stored
