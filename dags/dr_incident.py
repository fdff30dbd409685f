"""
### dr_incident — tell the right people in time, publish only what was approved

Trigger with params (**action** `open`, `update` or `resolve`):

- **open** — `severity`, `title`, affected `functions`, `description`, `commander`; an optional
  `incident_id`; `cause_key` (one open incident per cause: a second trigger of the same cause is
  added to the open incident's timeline, nobody is told twice); `kind` `drill`/`planned` sends
  PagerDuty change events that page nobody.
  1. the internal alert goes to the immediate and extended teams by Slack, PagerDuty (`dedup_key` =
     incident id) and e-mail; each delivery leaves a receipt under `incidents/<id>/receipts/`; a
     failed channel is retried, reported, and the alert goes by the audience's next method;
  2. management is told when the severity reaches the executive group;
  3. **acknowledge** (human-in-the-loop): no answer within the escalation time → management is
     told the incident is not acknowledged;
  4. customer, partner and (critical) public notices are drafted from `include/templates/` with the
     latest measured drill RTO as the estimate, and wait for approval: the approver may edit the
     text; Publish sends the approved text (status page, customers' e-mail, in-app banner); Reject
     or no answer publishes nothing and is recorded.
- **update** (`incident_id`) — a status update drafted from the incident, approved, published.
- **resolve** (`incident_id`) — the recovery announcement (approved, published; only for an incident
  whose severity reached the customers group); PagerDuty resolved
  with the same dedup key; banner cleared; management told; the post-incident report (root cause
  and lessons entered in the UI) written as Markdown and JSON to every required location.

Incident records, receipts, decisions, reports: `incidents/` in every required storage location;
the status page: `status/` there and at /continuity/status in the Airflow UI.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.incident import (AcknowledgeIncidentOperator, ApproveNoticeOperator,
                                           ChooseIncidentPathOperator, NotifyAudienceOperator, OpenIncidentOperator,
                                           PostIncidentReportOperator, PublishNoticeOperator, ResolveIncidentOperator)
from continuity.policy.loading import load_policy

_policy = load_policy()
_communication = _policy.communication
_escalate_to = _communication.escalation()[1].audience if _communication else "management"


def _approval_timeout(audience: str) -> timedelta:
    """An approval not given by the audience's deadline (or within an update interval, for the public)
    is late: the notice times out, publishes nothing, and the timeout is recorded."""
    if _communication is None:
        return timedelta(hours=1)
    return _communication.audiences[audience].deadline or _communication.update_interval


def _approvers(audience: str) -> list[str]:
    """The Airflow users the policy lets approve this audience's notices (empty: anyone with access)."""
    if _communication is None:
        return []
    role = _communication.audiences[audience].approval
    return list(_communication.approvers.get(role, [])) if role != "none" else []

with DAG(
    dag_id="dr_incident",
    description="Incident: alerts with receipts, acknowledgement and escalation, approved notices, status page, report",
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    # Incidents wait on people (acknowledgement, approvals: deferred, no worker slot): a run must never hold up
    # another cause's alert. A degraded region leaves one incident per red check (#30 item 3), a dozen at once;
    # a disaster's critical run must not queue behind them.
    max_active_runs=64,
    default_args={**DEFAULT_ARGS, "retries": 2},  # deliveries are receipted: a retry never sends twice
    tags=["continuity", "incident", "communication"],
    params={
        "action": Param("open", enum=["open", "update", "resolve"]),
        "severity": Param("high", enum=["low", "medium", "high", "critical"]),
        "title": Param("Incident", type="string", minLength=1),
        "functions": Param([], type="array", items={"type": "string", "enum": sorted(_policy.business_functions)},
                           description="affected business functions"),
        "description": Param("", type="string"),
        "commander": Param("on-call", type="string", description="the incident commander"),
        "incident_id": Param(None, type=["null", "string"], description="join this incident (open), or the "
                                                                         "incident to update or resolve"),
        "cause_key": Param(None, type=["null", "string"], description="one open incident per cause"),
        "kind": Param("incident", enum=["incident", "drill", "planned"]),
        "source": Param(None, type=["null", "string"]),
        "cause": Param(None, type=["null", "string"], description="the incident inbox entry this run handles "
                                                                   "(removed from the inbox once the incident holds it)"),
    },
) as dag:
    opened = OpenIncidentOperator(task_id="open_incident")
    path = ChooseIncidentPathOperator(task_id="choose_path")
    alert = NotifyAudienceOperator(task_id="alert_internal", audiences=["immediate_team", "extended_team"])
    executive = NotifyAudienceOperator(task_id="notify_executive", audiences=["management"],
                                       stakeholder_group="executive")
    acknowledge = AcknowledgeIncidentOperator(task_id="acknowledge")
    escalate = NotifyAudienceOperator(task_id="escalate_unacknowledged", audiences=[_escalate_to],
                                      purpose="escalation", unless_acknowledged="acknowledge")
    opened >> path >> alert >> [executive, acknowledge]
    acknowledge >> escalate
    for _notice, _audience, _template, _group, _minimum in (
            ("customers-notice", "customers", "customer_notification", "customers", None),
            ("partners-notice", "partners", "partner_notice", "partners", None),
            ("public-statement", "public", "public_statement", None, "critical")):
        _approve = ApproveNoticeOperator(task_id=f"approve_{_notice.replace('-', '_')}", notice=_notice,
                                         audience=_audience, template=_template, stakeholder_group=_group,
                                         minimum_severity=_minimum, response_timeout=_approval_timeout(_audience),
                                         approvers=_approvers(_audience))
        alert >> _approve >> PublishNoticeOperator(task_id=f"publish_{_notice.replace('-', '_')}",
                                                   approval_task_id=_approve.task_id)

    update = ApproveNoticeOperator(task_id="approve_update", notice="{{ 'update-' ~ run_id }}", audience="customers",
                                   template="status_page_update", response_timeout=_approval_timeout("customers"),
                                   approvers=_approvers("customers"))
    path >> update >> PublishNoticeOperator(task_id="publish_update", approval_task_id="approve_update")

    announce = ApproveNoticeOperator(task_id="approve_recovery_announcement", notice="recovery-announcement",
                                     audience="customers", template="recovery_announcement",
                                     response_timeout=_approval_timeout("customers"), approvers=_approvers("customers"))
    # Resolved even when the announcement was rejected or timed out (that is recorded); never on the open path.
    # The branch chooses resolve_incident itself (with the announcement when the incident reached customers).
    resolve = ResolveIncidentOperator(task_id="resolve_incident", trigger_rule="none_failed_min_one_success")
    path >> announce >> PublishNoticeOperator(task_id="publish_recovery_announcement",
                                              approval_task_id="approve_recovery_announcement") >> resolve
    announce >> resolve
    path >> resolve
    resolve >> PostIncidentReportOperator(task_id="post_incident_report")
