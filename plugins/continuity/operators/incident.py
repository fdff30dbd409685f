"""Operators of dr_incident: open or join the incident, tell people, ask for approvals, publish only
what was approved, resolve, and write the post-incident report.

Every step reads the incident from storage and writes what it did back (timeline, receipts,
decisions), so a rerun continues where the last attempt stopped and never sends twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.sdk import Context, Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from pydantic import BaseModel, ValidationError

from continuity.incidents import report as incident_report
from continuity.incidents.communication import TemplateError, incident_fields, latest_drill_rto, render
from continuity.hooks.incident import ContinuityIncidentHook
from continuity.incidents.records import (Decision, DeliveryFailed, Incident, IncidentError, IncidentRequest, IncidentStore,
                                  Message, check_request, claim_cause, communication_test, deliver, split_subject)
from continuity.notifiers.incident import clear_banners
from continuity.operators.base import ContinuityOperator
from continuity.policy.model import SEVERITY_ORDER, Policy, format_duration
from continuity.policy.loading import load_policy


class IncidentRef(BaseModel):
    """What the first task tells the others (XCom): which incident, what this run does with it."""

    incident_id: str
    action: Literal["open", "update", "resolve"]
    joined: bool
    severity: str = ""  # as it stands after this trigger
    raised: bool = False  # this trigger raised the severity of the open incident it joined: alert again


def _ref(context: Context) -> IncidentRef:
    return IncidentRef.model_validate(context["ti"].xcom_pull(task_ids="open_incident"))


class IncidentOperator(ContinuityOperator):
    """Base: the incident hook, store and senders."""

    def make_hook(self) -> ContinuityIncidentHook:
        return ContinuityIncidentHook(policy_path=self.policy_path)

    def hook(self) -> ContinuityIncidentHook:
        return super().hook()  # type: ignore[return-value]  # made by make_hook

    def incident(self, context: Context) -> tuple[ContinuityIncidentHook, IncidentStore, Incident]:
        hook = self.hook()
        store = hook.get_store()
        return hook, store, store.get(_ref(context).incident_id)


def _draft(policy: Policy, hook: ContinuityIncidentHook, incident: Incident, template: str, *,
           current_status: str, extra: dict[str, Any] | None = None) -> tuple[str, str]:
    fields = incident_fields(policy, incident, current_status=current_status,
                             estimate=latest_drill_rto(hook.incident_locations()))
    text = render(policy, template, {**fields, **(extra or {})})
    return split_subject(text, default=f"{incident.title} ({incident.incident_id})")


class OpenIncidentOperator(IncidentOperator):
    """Validate the run's params and open the incident, or join the open incident of the same cause
    (or the one `incident_id` names); for `update` and `resolve`, find the incident named.
    Bad params fail at once, naming the field, before anything is written."""

    ui_color = "#fadbd8"

    def execute(self, context: Context) -> dict[str, Any]:
        params = dict(context["params"])
        action = params.pop("action", "open")
        cause_entry = params.pop("cause", None)
        policy = self.policy
        store = self.hook().get_store()
        if action in ("update", "resolve"):
            if not params.get("incident_id"):
                raise AirflowFailException(f"action {action} needs incident_id (the id of an open incident)")
            try:
                incident = store.get(params["incident_id"])
            except IncidentError as exc:
                raise AirflowFailException(str(exc)) from exc
            if incident.status != "open":
                if cause_entry:  # an automatic resolve of an incident someone resolved meanwhile: nothing to do
                    claim_cause(store.locations, cause_entry, journal=store.journal)
                    raise AirflowSkipException(f"incident {incident.incident_id} is already resolved; cause "
                                               f"{cause_entry} removed from the inbox")
                raise AirflowFailException(f"incident {incident.incident_id} is already resolved")
            if cause_entry:
                # The run that handles it now exists and holds the incident: the inbox entry has done its work (a
                # later failure is this run's to retry, not the inbox's to hand over again).
                claim_cause(store.locations, cause_entry, journal=store.journal)
            self.log.info("incident %s (%s, opened %s): %s", incident.incident_id, incident.severity,
                          incident.opened_at.isoformat(timespec="seconds"), action)
            return IncidentRef(incident_id=incident.incident_id, action=action, joined=True,
                               severity=incident.severity).model_dump()
        try:
            request = IncidentRequest.model_validate(
                {**{k: v for k, v in params.items() if v not in (None, "")},
                 "source": f"{params.get('source') or context['dag_run'].run_type} (run {context['run_id']})"})
            check_request(policy, request)
            before = store.open_for(request.key()) if not request.incident_id else store.load(request.incident_id)
            incident, joined = store.open_or_join(request)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise AirflowFailException(f"param {'.'.join(str(p) for p in error['loc'])}: {error['msg']}; "
                                       f"no incident was opened") from None
        except IncidentError as exc:
            raise AirflowFailException(str(exc)) from exc
        if cause_entry:
            # Only now that the incident holds it does the cause leave the inbox: a run that failed before this
            # point leaves it there, and the inbox trigger hands it over again.
            claim_cause(store.locations, cause_entry, journal=store.journal)
            self.log.info("cause %s handled: removed from the incident inbox", cause_entry)
        raised = joined and before is not None and SEVERITY_ORDER[incident.severity] > SEVERITY_ORDER[before.severity]
        if raised:
            self.log.info("cause %s: open incident %s raised from %s to %s: everyone is alerted again at the new "
                          "severity", incident.cause_key, incident.incident_id, before.severity if before else "?",
                          incident.severity)
        elif joined:
            self.log.info("cause %s already has open incident %s: this trigger was added to it (%d triggers); "
                          "nobody is told again", incident.cause_key, incident.incident_id, incident.triggers)
        else:
            self.log.info("opened incident %s (%s) for cause %s", incident.incident_id, incident.severity,
                          incident.cause_key)
        return IncidentRef(incident_id=incident.incident_id, action="open", joined=joined, severity=incident.severity,
                           raised=raised).model_dump()


class ChooseIncidentPathOperator(BaseBranchOperator):
    """A new incident: alert and notices. A joined one: nothing more. Update or resolve: their paths."""

    def choose_branch(self, context: Context) -> str | list[str]:
        ref = _ref(context)
        if ref.action == "open":
            return ["alert_internal"] if not ref.joined or ref.raised else []
        if ref.action == "update":
            return "approve_update"
        # Customers hear of the recovery only from an incident grave enough to have reached them.
        communication = load_policy().communication
        if communication is not None and "customers" in communication.groups_for(ref.severity or "critical"):
            return ["approve_recovery_announcement", "resolve_incident"]
        return ["resolve_incident"]


class NotifyAudienceOperator(IncidentOperator):
    """Send a template's text to audiences by their methods, each delivery with a receipt (and a fallback
    method when one fails). Skipped for a stakeholder group the incident's severity does not reach.

    :param audiences: audience names of `communication.audiences`.
    :param template: template name; :param purpose: the receipts' purpose ("alert", "escalation", ...).
    :param stakeholder_group: only when the incident's severity reaches this group.
    :param unless_acknowledged: only when this HITL task's answer was not an acknowledgement by a person.
    """

    template_fields: Sequence[str] = (*ContinuityOperator.template_fields, "audiences")
    ui_color = "#fdebd0"

    def __init__(self, *, audiences: list[str], template: str = "internal_alert", purpose: str = "alert",
                 stakeholder_group: str | None = None, unless_acknowledged: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.audiences = audiences
        self.template = template
        self.purpose = purpose
        self.stakeholder_group = stakeholder_group
        self.unless_acknowledged = unless_acknowledged

    def execute(self, context: Context) -> list[dict[str, Any]]:
        hook, store, incident = self.incident(context)
        policy = hook.policy
        assert policy.communication is not None
        if self.stakeholder_group and self.stakeholder_group not in policy.communication.groups_for(incident.severity):
            group = policy.communication.stakeholder_groups[self.stakeholder_group]
            raise AirflowSkipException(f"severity {incident.severity} is below the {self.stakeholder_group} group's "
                                       f"threshold ({group.threshold}): not told")
        status = "investigating"
        if self.unless_acknowledged:
            answer = context["ti"].xcom_pull(task_ids=self.unless_acknowledged) or {}
            if answer.get("responded_by_user") and answer.get("chosen_options") == [AcknowledgeIncidentOperator.ACK]:
                raise AirflowSkipException(f"acknowledged by {answer['responded_by_user'].get('name')}: no escalation")
            status = (f"NOT ACKNOWLEDGED within {format_duration(policy.communication.escalation()[1].escalation)} "
                      f"— escalated")
            store.add_event(incident.incident_id, f"not acknowledged in time: escalated to {', '.join(self.audiences)}")
        try:
            subject, body = _draft(policy, hook, incident, self.template, current_status=status,
                                   extra={"test": incident.kind == "drill"})
        except TemplateError as exc:
            raise AirflowFailException(str(exc)) from exc
        if self.purpose == "escalation":
            subject = f"ESCALATION: {subject}"
        # Receipts are per purpose: a severity raised later is a new alert, the same severity never twice.
        purpose = f"{self.purpose}-{incident.severity}"
        event: Literal["trigger", "change"] = "change" if incident.kind in ("drill", "planned") else "trigger"
        message = Message(subject=subject, body=body, severity=incident.severity, event=event,
                          test=incident.kind == "drill")
        senders = hook.get_senders(context, store)
        receipts = []
        for name in self.audiences:
            try:
                receipts += deliver(store, incident, purpose=purpose, audience_name=name,
                                    audience=policy.communication.audiences[name], message=message, senders=senders)
            except DeliveryFailed as exc:
                raise AirflowFailException(str(exc)) from exc
        store.add_event(incident.incident_id, f"{purpose} sent to {', '.join(self.audiences)} "
                        f"({sum(r.status == 'delivered' for r in receipts)} deliveries)")
        failed = [r for r in receipts if r.status == "failed"]
        for receipt in failed:
            self.log.error("%s to %s by %s FAILED: %s%s", receipt.purpose, receipt.audience, receipt.method,
                           receipt.error, " (sent by another method instead)" if any(
                               r.fallback_for == receipt.method and r.status == "delivered" for r in receipts) else "")
        return [r.model_dump(mode="json") for r in receipts]


def _ack_timeout() -> timedelta:
    communication = load_policy().communication
    return communication.escalation()[1].escalation if communication else timedelta(minutes=30)


class AcknowledgeIncidentOperator(HITLOperator):
    """The incident commander acknowledges in the Airflow UI. No answer within the escalation time of the
    policy's first escalation group: the default answer ("Not acknowledged") and the escalation task tells
    that group."""

    ACK = "Acknowledge"
    NOT_ACK = "Not acknowledged"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's params: this form has none
        kwargs.setdefault("response_timeout", _ack_timeout())
        super().__init__(subject="Acknowledge incident {{ ti.xcom_pull(task_ids='open_incident')['incident_id'] }}",
                         body="An incident was opened and the immediate team alerted. Acknowledge to stop "
                              "escalation to management.", options=[self.ACK, self.NOT_ACK], defaults=[self.NOT_ACK],
                         **kwargs)

    def execute(self, context: Context) -> Any:
        incident = ContinuityIncidentHook().get_store().get(_ref(context).incident_id)
        if incident.kind in ("drill", "planned"):
            raise AirflowSkipException(f"a {incident.kind} change: nobody is paged, nothing to acknowledge")
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        ref = _ref(context)
        store = ContinuityIncidentHook().get_store()
        by = (result.get("responded_by_user") or {}).get("name")
        if by and result["chosen_options"] == [self.ACK]:
            incident = store.get(ref.incident_id)
            incident.acknowledged_by = by
            incident.note(f"acknowledged by {by}")
            store.save(incident)
        return result


class ApproveNoticeOperator(HITLOperator):
    """Draft an external notice from its template and ask for approval; the approver may edit the text.
    Approve publishes the (edited) text; Reject or no answer before the timeout publishes nothing. The
    decision is recorded in storage and returned.

    :param notice: the notice's name (decisions/<notice>.json); :param audience: who it is for;
    :param template: the template; :param stakeholder_group: skip unless the severity reaches it;
    :param minimum_severity: skip below it (the public statement: critical only).
    """

    APPROVE = "Publish"
    REJECT = "Reject"
    template_fields: Sequence[str] = (*HITLOperator.template_fields, "notice")

    def __init__(self, *, notice: str, audience: str, template: str, stakeholder_group: str | None = None,
                 minimum_severity: str | None = None, extra_fields: dict[str, str] | None = None,
                 approvers: list[str] | None = None, response_timeout: timedelta | None = None,
                 **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's params: this form has its own
        super().__init__(subject=f"Approve the {notice.replace('-', ' ')}", options=[self.APPROVE, self.REJECT],
                         defaults=[self.REJECT], params={"text": Param("", type="string", title="Text to publish",
                                                                       description="Edit before approving")},
                         response_timeout=response_timeout or timedelta(hours=1),
                         assigned_users=[{"id": user, "name": user} for user in approvers or []] or None, **kwargs)
        self.notice = notice
        self.audience = audience
        self.template = template
        self.stakeholder_group = stakeholder_group
        self.minimum_severity = minimum_severity
        self.extra_fields = extra_fields or {}

    def execute(self, context: Context) -> Any:
        hook = ContinuityIncidentHook()
        policy = hook.policy
        assert policy.communication is not None
        store = hook.get_store()
        incident = store.get(_ref(context).incident_id)
        if self.stakeholder_group and self.stakeholder_group not in policy.communication.groups_for(incident.severity):
            raise AirflowSkipException(f"severity {incident.severity} does not reach the {self.stakeholder_group} group")
        if self.minimum_severity and SEVERITY_ORDER[incident.severity] < SEVERITY_ORDER[self.minimum_severity]:
            raise AirflowSkipException(f"severity {incident.severity} is below {self.minimum_severity}: no {self.notice}")
        if incident.kind == "drill":
            raise AirflowSkipException("a drill's incident tells no one outside")
        extra = dict(self.extra_fields)
        extra.setdefault("statement", incident.description or incident.title)
        extra.setdefault("status", "investigating" if incident.status == "open" else "resolved")
        extra.setdefault("updated_at", f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
        extra.setdefault("message", _current_state(hook, incident))
        extra.setdefault("functions", {f: "affected" for f in incident.functions})
        extra.setdefault("resolution_time", f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
        extra.setdefault("root_cause", "under investigation; the post-incident report will say")
        extra.setdefault("services_affected", [policy.business_functions[f].title for f in incident.functions])
        extra.setdefault("total_duration", format_duration(incident.duration))
        try:
            subject, body = _draft(policy, hook, incident, self.template, current_status="investigating", extra=extra)
        except TemplateError as exc:
            raise AirflowFailException(str(exc)) from exc
        self.subject = f"Approve the {self.notice.replace('-', ' ')} of {incident.incident_id}: {subject}"
        self.body = (f"Audience: **{self.audience}** ({', '.join(policy.communication.audiences[self.audience].methods)})."
                     f" Edit the text if needed, then Publish; Reject or no answer publishes nothing.\n\n```\n{body}\n```")
        self.params["text"] = Param(body, type="string", title="Text to publish")
        store.add_event(incident.incident_id, f"{self.notice} drafted; waiting for approval")
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        store = ContinuityIncidentHook().get_store()
        ref = _ref(context)
        by = (result.get("responded_by_user") or {}).get("name")
        chosen = result["chosen_options"]
        outcome = "approved" if chosen == [self.APPROVE] and by else "timed_out" if not by else "rejected"
        decision = Decision(incident_id=ref.incident_id, notice=self.notice, audience=self.audience, outcome=outcome,
                            decided_by=by, decided_at=datetime.now(timezone.utc),
                            text=str((result.get("params_input") or {}).get("text") or ""))
        store.record_decision(decision)
        store.add_event(ref.incident_id, f"{self.notice}: {outcome}" + (f" by {by}" if by else " (no answer in time)"))
        self.log.info("%s of %s: %s%s", self.notice, ref.incident_id, outcome, f" by {by}" if by else "")
        return decision.model_dump(mode="json")


def _current_state(hook: ContinuityIncidentHook, incident: Incident) -> str:
    """What an update says was measured since the incident opened: dr_failover's audits (outcome,
    unavailability, data loss); what nothing measured says so."""
    audits = incident_report.failover_audits(hook.incident_locations(), incident.opened_at, datetime.now(timezone.utc))
    failover = ("; ".join(f"{a['outcome']} (unavailability {a.get('unavailability_seconds')} s, data loss "
                          f"{a.get('data_loss_bytes')} bytes; audit {a['run_id']})" for a in audits)
                if audits else "no failover run since the incident opened")
    return (f"{incident.description or incident.title}\nFailover: {failover}.\n"
            f"Replication lag: not measured by this update (see dr_health_monitor).")


class PublishNoticeOperator(IncidentOperator):
    """Publish the approved text of a notice by its audience's methods (status page, e-mail, banner);
    publishes nothing unless the decision is `approved`."""

    template_fields: Sequence[str] = (*ContinuityOperator.template_fields, "approval_task_id")

    def __init__(self, *, approval_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.approval_task_id = approval_task_id

    def execute(self, context: Context) -> list[dict[str, Any]]:
        decision = Decision.model_validate(context["ti"].xcom_pull(task_ids=self.approval_task_id))
        if decision.outcome != "approved":
            raise AirflowSkipException(f"{decision.notice} was {decision.outcome.replace('_', ' ')}: nothing published")
        if not decision.text.strip():
            raise AirflowFailException(f"{decision.notice} was approved with an empty text: nothing published")
        hook, store, incident = self.incident(context)
        policy = hook.policy
        assert policy.communication is not None
        subject, body = split_subject(decision.text, default=f"{incident.title} ({incident.incident_id})")
        message = Message(subject=subject, body=body, severity=incident.severity,
                          event="resolve" if incident.status == "resolved" else "trigger")
        try:
            receipts = deliver(store, incident, purpose=decision.notice, audience_name=decision.audience,
                               audience=policy.communication.audiences[decision.audience], message=message,
                               senders=hook.get_senders(context, store))
        except DeliveryFailed as exc:
            raise AirflowFailException(str(exc)) from exc
        store.add_event(incident.incident_id, f"{decision.notice} published to {decision.audience} by "
                        + ", ".join(sorted({r.method for r in receipts if r.status == 'delivered'})))
        return [r.model_dump(mode="json") for r in receipts]


class ResolveIncidentOperator(IncidentOperator):
    """Resolve: PagerDuty resolve with the incident's dedup key, banner cleared, management told, the
    incident closed (the recovery announcement is published by its own approval and publish steps)."""

    def execute(self, context: Context) -> dict[str, Any]:
        hook, store, incident = self.incident(context)
        policy = hook.policy
        assert policy.communication is not None
        audiences = policy.communication.audiences
        incident = store.resolve(incident.incident_id, by=f"run {context['run_id']}")
        summary = (f"RESOLVED: {incident.title} ({incident.incident_id}) after {format_duration(incident.duration)}")
        body = f"{summary}\n\nThe post-incident report is due within {format_duration(policy.communication.report_due)}."
        senders = hook.get_senders(context, store)
        receipts = []
        for name, methods in (("immediate_team", None), ("management", None)):
            if name in audiences:
                event: Literal["resolve", "change"] = "change" if incident.kind in ("drill", "planned") else "resolve"
                receipts += deliver(store, incident, purpose="resolved", audience_name=name, audience=audiences[name],
                                    message=Message(subject=summary, body=body, severity=incident.severity, event=event),
                                    senders=senders, methods=methods)
        for key in clear_banners(hook.get_banners()):
            self.log.info("banner cleared: %s", key)
        store.add_event(incident.incident_id, "banner cleared; immediate team and management told")
        return {"incident_id": incident.incident_id, "duration": format_duration(incident.duration),
                "receipts": [r.model_dump(mode="json") for r in receipts]}


class PostIncidentReportOperator(HITLOperator):
    """Ask the incident commander for root cause, lessons learned and action items (a form in the UI), then
    write the post-incident report (Markdown and JSON) to every required location. No answer before the
    report is due: the report is written with those fields marked `not entered`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's params: this form has its own
        super().__init__(subject="Post-incident report: root cause and lessons learned", options=["Write the report"],
                         defaults=["Write the report"],
                         params={"root_cause": Param("not entered", type="string"),
                                 "lessons_learned": Param("not entered", type="string"),
                                 "action_items": Param("not entered", type="string",
                                                       description="one per line")},
                         response_timeout=kwargs.pop("response_timeout", None) or _report_due(), **kwargs)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        hook = ContinuityIncidentHook()
        store = hook.get_store()
        incident = store.get(_ref(context).incident_id)
        entered = result.get("params_input") or {}
        report = incident_report.build(hook.policy, incident, store.receipts(incident.incident_id),
                                       root_cause=str(entered.get("root_cause") or "not entered"),
                                       lessons_learned=str(entered.get("lessons_learned") or "not entered"),
                                       action_items=[line.strip() for line in str(entered.get("action_items") or "")
                                                     .splitlines() if line.strip() and line.strip() != "not entered"],
                                       locations=hook.incident_locations())
        for key in incident_report.store(hook.policy, store, report):
            self.log.info("post-incident report written to %s", key)
        store.add_event(incident.incident_id, "post-incident report written")
        return report.model_dump(mode="json")


def _report_due() -> timedelta:
    communication = load_policy().communication
    return communication.report_due if communication else timedelta(hours=48)


__all__ = ["AcknowledgeIncidentOperator", "ApproveNoticeOperator", "ChooseIncidentPathOperator",
           "NotifyAudienceOperator", "OpenIncidentOperator", "PostIncidentReportOperator", "PublishNoticeOperator",
           "ResolveIncidentOperator", "IncidentWorkOperator", "CommunicationTestOperator"]


class IncidentWorkOperator(IncidentOperator):
    """What dr_incident_inbox hands to dr_incident, as the conf of one run each: every cause the inbox
    trigger delivered (this run's triggering asset events), and a status update for every open incident
    whose update is due (the policy's update interval since the last)."""

    def execute(self, context: Context) -> list[dict[str, Any]]:
        confs = []
        for events in (context.get("triggering_asset_events") or {}).values():
            for event in events:
                payload = (event.extra or {}).get("payload") or {}
                if "request" in payload:
                    request = IncidentRequest.model_validate(payload["request"])
                    self.log.info("cause %s: %s (%s) from %s", request.key(), request.title, request.severity,
                                  request.source)
                    confs.append({"action": "open", **request.model_dump(mode="json"),
                                  "cause": payload.get("cause")})
        hook = self.hook()
        store = hook.get_store()
        caught_up = store.catch_up()
        if caught_up:
            self.log.info("incident records written where they were missing: %s", ", ".join(caught_up))
        communication = hook.policy.communication
        if communication is not None:
            for incident in store.updates_due(communication.update_interval):
                self.log.info("incident %s: a status update is due (every %s)", incident.incident_id,
                              format_duration(communication.update_interval))
                confs.append({"action": "update", "incident_id": incident.incident_id})
        if not confs:
            raise AirflowSkipException("no cause reported and no update due")
        return confs


class CommunicationTestOperator(IncidentOperator):
    """The monthly drill's test of the communication system: a test message through every channel of every
    internal audience, each receipt checked. Fails naming every channel that did not deliver (a fallback
    that carried the message does not make the failed channel pass)."""

    template_fields: Sequence[str] = (*ContinuityOperator.template_fields, "drill_id")

    def __init__(self, *, drill_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drill_id = drill_id

    def execute(self, context: Context) -> list[dict[str, Any]]:
        hook = self.hook()
        if hook.policy.communication is None:
            raise AirflowSkipException("the policy has no communication section: nothing to test")
        store = hook.get_store()
        try:
            incident, receipts = communication_test(store, hook.policy, hook.get_senders(context, store),
                                                    drill_id=self.drill_id)
        except DeliveryFailed as exc:
            raise AirflowFailException(f"communication test: {exc}") from exc
        for receipt in receipts:
            self.log.info("%s %s by %s: %s%s", receipt.audience, receipt.purpose, receipt.method, receipt.status,
                          f" ({receipt.error})" if receipt.error else "")
        failed = [f"{r.audience}/{r.method}: {r.error}" for r in receipts if r.status == "failed"]
        if failed:
            raise AirflowFailException(f"communication test of incident {incident.incident_id}: "
                                       f"{len(failed)} channel(s) failed: {'; '.join(failed)}")
        self.log.info("communication test %s: %d test messages delivered, every receipt checked",
                      incident.incident_id, len(receipts))
        return [r.model_dump(mode="json") for r in receipts]
